"""A folder of our own for what the compiled kernels keep between runs.

Inductor's on-disk cache holds pickled entries and shared libraries that it loads and runs;
its default folder, /tmp/torchinductor_<user>, sits in a world-writable directory where
another local user could plant one first. The kernels keep theirs under the user's cache
directory instead, readable and writable by the owner alone.
"""
from __future__ import annotations

import os
from pathlib import Path


def private_dir(name: str) -> Path:
    """`$GPT2_CACHE_DIR/<name>` (default `$XDG_CACHE_HOME/gpt2` or `~/.cache/gpt2`), created
    with mode 0700. Raises PermissionError when it exists but others may write to it."""
    root = os.environ.get("GPT2_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                    Path.home() / ".cache") / "gpt2"
    path = Path(root) / name
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    if hasattr(os, "getuid"):  # POSIX: owned by us, no write access for group or others
        info = path.stat()
        if info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise PermissionError(f"{path} may be written by other users (mode {info.st_mode & 0o777:o}); "
                                  "make it private (chmod 700) or set GPT2_CACHE_DIR")
    return path


def use_private_inductor_cache() -> Path:
    """Point inductor at `private_dir("inductor")` unless TORCHINDUCTOR_CACHE_DIR is already
    set (by the user, or by an earlier compile in this process); return the folder in use."""
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(private_dir("inductor"))
    return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
