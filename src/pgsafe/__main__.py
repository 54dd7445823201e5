from pgsafe.cli.main import run

run()
