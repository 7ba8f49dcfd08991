"""Peak resident set size of benchmark children, measured without the parent's memory folded in.

Linux keeps the memory high-water mark of a process image that exec() replaces and folds it into the new
program's ru_maxrss (the mm's hiwater_rss is saved into the signal struct's `maxrss` at exec). Python's
`subprocess` starts children with vfork/fork + exec, so a child started directly from a big process (pytest, a
bench script that imported torch or holds a dataset) reports at least the parent's RSS at the moment of the
fork. `peak_rss_of` runs the command under a small launcher (a fresh ~10 MiB interpreter): the launcher's child is
exec'd from a small image, so its `os.wait4` ru_maxrss is that child's own peak.

A child that reports its own peak should use `own_peak_mib` (VmHWM, not ru_maxrss, for the same reason).
`rss_now` / `reset_peak` read and reset the calling process's own VmRSS / VmHWM (/proc/self/status and
/proc/self/clear_refs, see proc(5)), for the peak of one phase inside a process.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

_LAUNCHER = (
    "import os, subprocess, sys\n"
    "p = subprocess.Popen(sys.argv[1:])\n"
    "_, status, usage = os.wait4(p.pid, 0)\n"
    "sys.stderr.write(f'\\n@peak_rss_kib={usage.ru_maxrss}\\n')\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)
MARK = "\n@peak_rss_kib="


def peak_rss_of(
    cmd: list[str], env: dict | None = None, cwd: str | None = None, timeout: float | None = None
) -> tuple[int, str, str, float]:
    """Run `cmd` as a fresh process: (exit status, stdout, stderr, its peak resident set size in MiB).

    The peak is the kernel's ru_maxrss of that one process (`os.wait4` on it: the per-child form of
    getrusage(RUSAGE_CHILDREN), which would report the largest of all children waited for so far), measured by
    a small launcher process so that the caller's own memory is not counted (see the module docstring).
    Grandchildren that the command starts are not counted (their own ru_maxrss is separate).

    Raises:
        RuntimeError: the launcher printed no peak (it could not start `cmd`); the stderr tail is in the message.
        subprocess.TimeoutExpired: `timeout` (seconds) passed.
    """
    proc = subprocess.run(
        [sys.executable, "-c", _LAUNCHER, *cmd],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        check=False,
        timeout=timeout,
    )
    err, _, tail = proc.stderr.rpartition(MARK)
    if not tail.strip().isdigit():
        raise RuntimeError(f"the launcher did not report a peak (exit {proc.returncode}): {proc.stderr[-2000:]}")
    return proc.returncode, proc.stdout, err, int(tail) / 1024


def rss_now() -> dict[str, float]:
    """This process's VmRSS (now), VmHWM (peak since start or the last `reset_peak`), RssAnon and RssFile, in MiB
    (/proc/self/status; empty dict where there is none)."""
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return {}
    return {k: int(v) / 1024 for k, v in re.findall(r"^(VmRSS|VmHWM|RssAnon|RssFile):\s+(\d+) kB", text, re.M)}


def own_peak_mib() -> float:
    """This process image's own peak RSS in MiB, for a benchmark child to report about itself.

    VmHWM (/proc/self/status): the high-water mark of the memory map created at exec, so a parent's memory is not
    in it, unlike getrusage(RUSAGE_SELF).ru_maxrss, which also holds the high-water mark of the image exec()
    replaced, i.e. the parent's peak when the child was started with vfork/fork + exec (Python's subprocess).
    Falls back to ru_maxrss where /proc is missing (non-Linux: there the floor does not apply the same way).
    Do not combine with `reset_peak`, which lowers VmHWM.
    """
    peak = rss_now().get("VmHWM")
    if peak is None:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if sys.platform == "darwin":  # bytes there, KiB on Linux
            peak /= 1024
    return peak


def malloc_info() -> dict[str, float]:
    """glibc's heap accounting now (`mallinfo2`, all arenas), in MiB: `in_use` = bytes handed out by malloc
    (uordblks + hblkhd, the mmapped blocks), `free_kept` = freed bytes malloc keeps in its heaps (fordblks),
    which count in RSS but hold no live data. Empty dict where glibc's mallinfo2 (>= 2.33) is missing."""
    import ctypes
    import ctypes.util

    class _Mallinfo2(ctypes.Structure):
        _fields_ = [
            (n, ctypes.c_size_t)
            for n in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        fn = libc.mallinfo2
    except (OSError, AttributeError):
        return {}
    fn.restype = _Mallinfo2
    m = fn()
    return {"in_use": (m.uordblks + m.hblkhd) / 2**20, "free_kept": m.fordblks / 2**20}


def reset_peak() -> bool:
    """Reset this process's VmHWM to its current RSS (write 5 to /proc/self/clear_refs, Linux >= 4.0).

    It lowers this process's ru_maxrss too (getrusage(RUSAGE_SELF) and the parent's `wait4` report the larger of
    the peak saved at exec and the current VmHWM), so a caller that resets must keep the maximum of the phase
    peaks itself. Returns False where it is not possible.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True
