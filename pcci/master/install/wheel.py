"""
The master's own wheel, made from the pcci it runs: whether installed from
a wheel, from a source tree or in development mode, a worker installs the
very code the master runs, of the same version.

The wheel is made the same byte for byte from the same files (sorted,
dated 1980, one mode), so masters of one version serve one wheel, and an
install line pinned by one of them holds for the others.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import io
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pcci

#: What the wheel is: pure Python, for any Python 3 (the worker's range is
#: in its metadata: Requires-Python).
TAG = "py3-none-any"
DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True)
class Wheel:
    name: str
    data: bytes
    sha256: str

    @property
    def version(self) -> str:
        return self.name.split("-")[1]


def package_files() -> list[tuple[str, Path]]:
    """Each file of pcci's packages and its twistd plugins, as (name in the wheel, where it is)."""
    root = Path(pcci.__file__).parent
    files = [
        (f"pcci/{path.relative_to(root).as_posix()}", path)
        for path in root.rglob("*")
        if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo")
    ]
    for plugin in ("pcci_master", "pcci_worker"):
        spec = importlib.util.find_spec(f"twisted.plugins.{plugin}")
        if spec is None or spec.origin is None:
            raise RuntimeError(f"twisted/plugins/{plugin}.py is not installed")
        files.append((f"twisted/plugins/{plugin}.py", Path(spec.origin)))
    return sorted(files)


def metadata(version: str) -> tuple[str, str]:
    """The installed pcci's METADATA (with this C{version}) and entry points."""
    # An installed one (a .dist-info) first: a source tree's pcci.egg-info
    # on the path may list no dependencies.
    found = [d for d in importlib.metadata.distributions(name="pcci") if d.read_text("METADATA")]
    if not found:
        raise RuntimeError("pcci is not installed (no pcci-*.dist-info): install it with pip")
    dist = found[0]
    lines = (dist.read_text("METADATA") or "").splitlines()
    lines = [f"Version: {version}" if line.startswith("Version:") else line for line in lines]
    return "\n".join(lines) + "\n", dist.read_text("entry_points.txt") or ""


def _record_line(name: str, data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    return f"{name},sha256={digest},{len(data)}"


def build(version: str = pcci.__version__) -> Wheel:
    """pcci's wheel, of C{version}, from the files this process runs (blocking: call it in a thread)."""
    info = f"pcci-{version}.dist-info"
    meta, entry_points = metadata(version)
    contents = [(name, path.read_bytes()) for name, path in package_files()]
    contents += [
        (f"{info}/METADATA", meta.encode()),
        (f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: pcci\nRoot-Is-Purelib: true\nTag: {TAG}\n".encode()),
        (f"{info}/entry_points.txt", entry_points.encode()),
        (f"{info}/top_level.txt", b"pcci\ntwisted\n"),
    ]
    record = "".join(_record_line(name, data) + "\n" for name, data in contents) + f"{info}/RECORD,,\n"
    contents.append((f"{info}/RECORD", record.encode()))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in contents:
            entry = zipfile.ZipInfo(name, DATE)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(entry, data)
    data = out.getvalue()
    return Wheel(f"pcci-{version}-{TAG}.whl", data, hashlib.sha256(data).hexdigest())
