"""The host oracle: /proc/interrupts parsing on fixtures, syscall errors, and a live IPI check on this host."""
import ctypes
import errno
from pathlib import Path

import pytest

from mmugather.host import syscalls as sc
from mmugather.host.interrupts import parse_tlb, read_tlb
from mmugather.host.probe import Script, host_supported, run_script

FIX = Path(__file__).parent / "fixtures"


def test_tlb_row_of_a_2_cpu_x86_host():
    assert parse_tlb((FIX / "interrupts_x86_2cpu.txt").read_text()) == {0: 20044, 1: 9756}


def test_tlb_row_is_keyed_by_the_cpu_numbers_of_the_header():
    """CPU2 is offline: the third column is CPU3's."""
    assert parse_tlb((FIX / "interrupts_x86_4cpu_offline.txt").read_text()) == {0: 301, 1: 4410, 3: 17}


@pytest.mark.parametrize("name", ["interrupts_arm64_no_tlb.txt", "interrupts_x86_garbled_tlb.txt"])
def test_no_usable_tlb_row_is_none(name):
    assert parse_tlb((FIX / name).read_text()) is None


def test_missing_file_or_empty_text_is_none(tmp_path):
    assert parse_tlb("") is None
    assert read_tlb(tmp_path / "nope") is None


def test_syscall_failures_raise_oserror_with_errno():
    with pytest.raises(OSError) as e:
        sc.munmap(sc.PAGE + 1, sc.PAGE)
    assert e.value.errno == errno.EINVAL
    with pytest.raises(OSError) as e:
        sc.mmap(0)
    assert e.value.errno == errno.EINVAL


def test_mremap_moves_and_keeps_the_contents():
    a = sc.mmap(2 * sc.PAGE)
    sc.touch(a, 2 * sc.PAGE)
    dest = sc.mmap(2 * sc.PAGE, sc.PROT_NONE)
    b = sc.mremap(a, 2 * sc.PAGE, 2 * sc.PAGE, sc.MREMAP_MAYMOVE | sc.MREMAP_FIXED, dest)
    assert b == dest and ctypes.string_at(b + sc.PAGE, 1) == b"\x01"
    sc.munmap(b, 2 * sc.PAGE)


def test_script_fields_are_checked():
    with pytest.raises(ValueError, match="op"):
        Script("x", "munmapp", 1, "running")
    with pytest.raises(ValueError, match="second"):
        Script("x", "munmap", 1, "spinning")
    with pytest.raises(ValueError, match="pages"):
        Script("x", "munmap", 0, "alone")


@pytest.mark.host
@pytest.mark.skipif(host_supported() != "", reason=f"host cannot run the probes: {host_supported()}")
@pytest.mark.parametrize("script,cpu1", [
    (Script("munmap-1-running", "munmap", 1, "running"), 1),
    (Script("munmap-1-alone", "munmap", 1, "alone"), 0),
    (Script("untouched-1-running", "munmap-untouched", 1, "running"), 0),
], ids=lambda x: getattr(x, "name", ""))
def test_live_host_shootdowns(script, cpu1):
    """A 1-page munmap IPIs the CPU running another thread of the process, and nobody when the process
    has one thread or nothing was ever mapped in the page tables (medians of 5)."""
    r = run_script(script, repeats=5, timeout=30)
    assert r.status == "ok", r.reason
    median1 = r.median[r.cpus.index(1)]
    assert (median1 >= 1) if cpu1 else (median1 == 0), r.samples
