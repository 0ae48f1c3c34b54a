"""The host kernel as an oracle: real syscalls on this machine, TLB-shootdown IPI counts from
/proc/interrupts, and timings that calibrate or benchmark the simulator against the real kernel."""
