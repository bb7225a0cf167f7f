"""Build and load the native HTTP/2 core (h2core.c on libnghttp2) with cffi in API mode.

The extension is compiled on first use into a cache directory, keyed by a hash of the
C source, the declarations, the Python version and the cffi version, so a changed
source is rebuilt and a built one is reused by every process (the test suite starts
many). Several processes may build at once: each compiles in its own temporary
directory and moves the result into place atomically. Nothing built is ever written
into the source tree.

Needs, at build time, a C compiler, Python's headers and libnghttp2's headers
(Debian: `libnghttp2-dev`; `make` installs it when missing and running as root).

    python -m hivemind_ratelimit.rls.h2build     # build now (the Makefile does this)

The cache directory is $HIVEMIND_BUILD_CACHE, else $XDG_CACHE_HOME/hivemind-ratelimit,
else ~/.cache/hivemind-ratelimit, else a directory under the system temp directory.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

SOURCE = Path(__file__).with_name("h2core.c")

CDEF = """
typedef struct hm_conn hm_conn;
typedef struct hm_request {
    int32_t stream_id;
    int method;
    const char *body;
    size_t len;
    const char *meta;
    size_t meta_len;
} hm_request;
hm_conn *hm_new(uint32_t max_streams, size_t max_message, size_t max_header_bytes,
                size_t max_buffered);
void hm_free(hm_conn *c);
int hm_feed(hm_conn *c, const char *data, size_t len);
int hm_next(hm_conn *c, hm_request *out);
int hm_respond(hm_conn *c, int32_t stream_id, const char *body, size_t len, int status,
               const char *message);
size_t hm_pending(hm_conn *c, const char **out);
int hm_want(hm_conn *c);
int hm_expire(hm_conn *c);
void hm_shutdown_notice(hm_conn *c);
void hm_goaway(hm_conn *c);
size_t hm_open_streams(hm_conn *c);
size_t hm_buffered(hm_conn *c);
int64_t hm_now(void);
"""


class BuildError(RuntimeError):
    """The native core cannot be built or loaded here."""


def cache_dir() -> Path:
    configured = os.environ.get("HIVEMIND_BUILD_CACHE")
    if configured:
        return Path(configured)
    xdg = os.environ.get("XDG_CACHE_HOME")
    if xdg:
        return Path(xdg) / "hivemind-ratelimit"
    if os.environ.get("HOME"):
        return Path.home() / ".cache" / "hivemind-ratelimit"
    return _fallback_dir()


def _module_name() -> str:
    import cffi

    digest = hashlib.sha256()
    digest.update(SOURCE.read_bytes())
    digest.update(CDEF.encode())
    digest.update(sys.version.encode())
    digest.update(cffi.__version__.encode())
    digest.update((sysconfig.get_config_var("EXT_SUFFIX") or "").encode())
    return f"_hivemind_h2_{digest.hexdigest()[:16]}"


def _ffi(name: str) -> Any:
    import cffi

    ffi = cffi.FFI()
    ffi.cdef(CDEF)
    ffi.set_source(
        name,
        SOURCE.read_text(encoding="utf-8"),
        libraries=["nghttp2"],
        extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
    )
    return ffi


def _fallback_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"hivemind-ratelimit-{os.getuid()}"


def build(directory: Path | None = None) -> Path:
    """Compile the extension into the cache (if not there yet); its path.

    A cache that cannot be written (a home directory that does not exist, a read-only
    file system) falls back to a directory under the system temp directory.
    """
    name = _module_name()
    suffix = sysconfig.get_config_var("EXT_SUFFIX") or ".so"
    candidates = [directory] if directory else [cache_dir(), _fallback_dir()]
    for target_dir in candidates:
        target = target_dir / f"{name}{suffix}"
        if target.exists():
            return target
    problems = []
    for target_dir in candidates:
        try:
            target_dir.mkdir(parents=True, exist_ok=True)
            work = Path(tempfile.mkdtemp(prefix="build-", dir=target_dir))
            break
        except OSError as exc:
            problems.append(f"{target_dir}: {exc.strerror or exc}")
    else:
        raise BuildError("cannot write a build cache: " + "; ".join(problems))
    target = target_dir / f"{name}{suffix}"
    try:
        ffi = _ffi(name)
        try:
            built = Path(ffi.compile(tmpdir=str(work), verbose=False))
        except Exception as exc:  # distutils/setuptools raise several kinds
            raise BuildError(
                "cannot compile the libnghttp2 core: needs a C compiler, Python headers and "
                f"libnghttp2 headers (Debian: apt-get install gcc libnghttp2-dev): {exc}"
            ) from exc
        os.replace(built, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


_loaded: Any = None


def load() -> tuple[Any, Any]:
    """(ffi, lib) of the native core, building it first if needed."""
    global _loaded
    if _loaded is None:
        path = build()
        spec = importlib.util.spec_from_file_location(_module_name(), path)
        if spec is None or spec.loader is None:
            raise BuildError(f"cannot load {path}")
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except ImportError as exc:
            raise BuildError(f"cannot load {path}: {exc}") from exc
        _loaded = module
    return _loaded.ffi, _loaded.lib


def main() -> int:
    try:
        path = build()
    except BuildError as exc:
        print(f"hivemind: {exc}", file=sys.stderr)
        return 1
    print(f"libnghttp2 core: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
