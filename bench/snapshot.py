"""The pgsafe under test: frozen for a run, and identified by a digest of its sources."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path

PROJECT = Path(__file__).resolve().parent.parent
INSTALLED_PGSAFE = Path(os.environ.get("PGSAFE_VENV", "/opt/pgsafe")) / "bin" / "pgsafe"


def source_hashes(tested: Path) -> dict[str, str]:
    """sha1 over the .py files of the pgsafe under test, of the installed one, of src/ in the
    work tree and of src/ at git HEAD: which code was measured."""
    def digest(files: dict[str, bytes]) -> str:
        h = hashlib.sha1()
        for name in sorted(files):
            h.update(name.encode())
            h.update(files[name])
        return h.hexdigest()[:12]

    def tree(root: Path) -> str:
        if not root.is_dir():
            return "unavailable"
        return digest({str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*.py")})

    def package_of(python: Path) -> Path:
        r = subprocess.run([str(python), "-c", "import pgsafe, os; print(os.path.dirname(pgsafe.__file__))"],
                           capture_output=True, text=True)
        return Path(r.stdout.strip()) if r.returncode == 0 else Path("/nonexistent")

    out = {"tested": tree(package_of(tested.parent / "python")),
           "installed": tree(package_of(INSTALLED_PGSAFE.parent / "python")),
           "work tree": tree(PROJECT / "src" / "pgsafe")}
    try:
        names = subprocess.run(["git", "-C", str(PROJECT), "ls-tree", "-r", "--name-only", "HEAD", "src/pgsafe"],
                               capture_output=True, text=True, check=True).stdout.split()
        files = {}
        for n in names:
            if n.endswith(".py"):
                files[n[len("src/pgsafe/"):]] = subprocess.run(
                    ["git", "-C", str(PROJECT), "show", f"HEAD:{n}"], capture_output=True, check=True).stdout
        out["git HEAD"] = digest(files)
    except (subprocess.CalledProcessError, OSError):
        out["git HEAD"] = "unavailable"
    return out


def snapshot_pgsafe(source: str, work: Path) -> Path:
    """Freeze the pgsafe under test for the whole run: a venv under the work directory holding a
    copy of the package (from the installed venv, or from src/ of this work tree), its
    dependencies taken from the installed venv. Others may reinstall /opt/pgsafe mid-run."""
    installed_python = INSTALLED_PGSAFE.parent / "python"
    r = subprocess.run([str(installed_python), "-c", "import os, site, pgsafe; "
                        "print(os.path.dirname(pgsafe.__file__)); print(site.getsitepackages()[0]); "
                        "import sys; print(os.path.realpath(sys.executable))"],
                       capture_output=True, text=True, check=True)
    pkg_dir, site_dir, base_python = r.stdout.split()
    venv = work / "pgsafe-venv"
    if venv.exists():
        shutil.rmtree(venv)
    subprocess.run([base_python, "-m", "venv", "--without-pip", str(venv)], check=True)
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
                       capture_output=True, text=True, check=True)
    own_site = Path(r.stdout.strip())
    src = Path(pkg_dir) if source == "installed" else PROJECT / "src" / "pgsafe"
    shutil.copytree(src, own_site / "pgsafe", ignore=shutil.ignore_patterns("__pycache__"))
    (own_site / "zz_pgsafe_deps.pth").write_text(site_dir + "\n")  # after our copy on sys.path
    script = venv / "bin" / "pgsafe"
    # the same entry point as the installed console script (pyproject.toml)
    script.write_text(f"#!{venv / 'bin' / 'python'}\nfrom pgsafe.cli.main import run\n"
                      "if __name__ == '__main__':\n    run()\n")
    os.chmod(script, 0o755)
    subprocess.run([str(venv / "bin" / "python"), "-m", "compileall", "-q", str(own_site / "pgsafe")], check=True)
    r = subprocess.run([str(venv / "bin" / "python"), "-c", "import pgsafe; print(pgsafe.__file__)"],
                       capture_output=True, text=True, check=True)
    if not r.stdout.strip().startswith(str(own_site)):
        raise RuntimeError(f"the snapshot venv imports pgsafe from {r.stdout.strip()}, not from {own_site}")
    return script
