# make bench: the benchmark side by side with pgBackRest and pg_basebackup on the three datasets
# of issue 6 (realistic, pgbench, many-files), results into docs/PERFORMANCE.md. Run as root.
# See bench/Makefile for single datasets (make -C bench realistic, ...) and docs/PERFORMANCE.md.
.PHONY: bench
bench:
	$(MAKE) -C bench all
