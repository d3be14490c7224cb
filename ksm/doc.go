// Package ksm throttles the kernel's same-page merging (KSM) for nbdd.
//
// KSM only scans memory that was marked mergeable with madvise(MADV_MERGEABLE), and
// its default pace (pages_to_scan=100 every sleep_millisecs=20) needs minutes per
// gigabyte. Scanning aggressively all the time burns a core. The Throttler follows
// the Kata Containers ksm-throttler: a kick (an export of a VM image appeared) makes
// ksmd aggressive, then the scan rate decays level by level (aggressive, standard,
// slow) back to the host's original settings, which were snapshotted before the
// first write and are restored in a fixed order (advisor_mode, the other knobs, run
// last). See Documentation/admin-guide/mm/ksm.rst for the sysfs interface under
// /sys/kernel/mm/ksm.
//
// The package differs from Kata's throttler in that it starts idle and writes
// nothing until the first kick, bases pages_to_scan on the bytes actually marked
// mergeable (with a floor and a cap) rather than on all anonymous memory, drops a
// level early when general_profit stops rising, persists its snapshot so a crashed
// nbdd can restore the original values on restart, and stops managing a knob that
// someone else changed rather than fighting another tuner.
//
// Security: KSM is a content side channel between every process that has mergeable
// memory (ksm.rst, "Security considerations"). Only mark memory mergeable for
// mutually trusted tenants; nbdd makes it opt-in per export.
//
// The package has no package-level mutable state. Signals belong to the caller:
// cmd/nbdd maps SIGUSR1 to Throttler.Kick and cancels Run's context on SIGTERM.
package ksm
