//! A cap on glibc malloc's arenas, set at start-up. glibc gives threads that allocate at the
//! same time arenas of their own, up to 8 per CPU of the node (not of the container's CPU
//! limit), and memory freed in one arena is not reused by another: under many concurrent
//! large bodies each arena grows to its own peak, and the gateway's peak RSS is their sum.
//! A cap of two arenas per CPU the process may use (one for each runtime worker, one for each
//! blocking section it may run, librdkafka's threads sharing them) keeps that sum near what
//! the requests hold, with an arena free for every thread that can run at once.
//!
//! An operator's own choice wins: with `MALLOC_ARENA_MAX`, or `glibc.malloc.arena_max` in
//! `GLIBC_TUNABLES`, in the environment, glibc's handling is left alone.

use std::ffi::OsStr;

/// Arenas per CPU the process may use: a runtime worker and a blocking section per CPU.
const ARENAS_PER_CPU: usize = 2;

/// The arena cap for a process that may use `cpus` CPUs (as
/// `std::thread::available_parallelism` counts them, container limits included).
pub fn arena_cap(cpus: usize) -> usize {
    ARENAS_PER_CPU * cpus.max(1)
}

/// Whether the environment already caps glibc's arenas: `MALLOC_ARENA_MAX` is set, or
/// `GLIBC_TUNABLES` (colon-separated `name=value` entries) names `glibc.malloc.arena_max`.
pub fn operator_caps_arenas(
    malloc_arena_max: Option<&OsStr>,
    glibc_tunables: Option<&OsStr>,
) -> bool {
    malloc_arena_max.is_some()
        || glibc_tunables.is_some_and(|tunables| {
            tunables
                .as_encoded_bytes()
                .split(|&b| b == b':')
                .any(|entry| entry.starts_with(b"glibc.malloc.arena_max="))
        })
}

/// Caps glibc's malloc arenas at [`arena_cap`] of this process's CPUs, unless the environment
/// already caps them. Returns the cap it set, if any. Call it first thing in `main`: arenas
/// are created as threads start allocating, and the cap does not shrink arenas that exist.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
pub fn cap_malloc_arenas() -> Option<usize> {
    if operator_caps_arenas(
        std::env::var_os("MALLOC_ARENA_MAX").as_deref(),
        std::env::var_os("GLIBC_TUNABLES").as_deref(),
    ) {
        return None;
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let cap = arena_cap(cpus);
    let value = libc::c_int::try_from(cap).ok()?;
    // SAFETY: mallopt only sets an allocator parameter; with M_ARENA_MAX it takes any
    // positive value and touches no memory of ours.
    let set = unsafe { libc::mallopt(libc::M_ARENA_MAX, value) };
    (set == 1).then_some(cap)
}

/// Elsewhere (musl, other systems) the allocator has no per-thread arenas to cap.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
pub fn cap_malloc_arenas() -> Option<usize> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cap_is_two_arenas_per_cpu_and_at_least_two() {
        assert_eq!(arena_cap(0), 2);
        assert_eq!(arena_cap(1), 2);
        assert_eq!(arena_cap(2), 4);
        assert_eq!(arena_cap(16), 32);
    }

    #[test]
    fn malloc_arena_max_in_the_environment_wins() {
        assert!(operator_caps_arenas(Some(OsStr::new("8")), None));
        // Even an empty value: glibc reads it, so the gateway stays out of the way.
        assert!(operator_caps_arenas(Some(OsStr::new("")), None));
    }

    #[test]
    fn glibc_tunables_naming_arena_max_wins() {
        let tunables = |s| operator_caps_arenas(None, Some(OsStr::new(s)));
        assert!(tunables("glibc.malloc.arena_max=2"));
        assert!(tunables(
            "glibc.malloc.trim_threshold=131072:glibc.malloc.arena_max=1"
        ));
        assert!(!tunables("glibc.malloc.arena_test=2"));
        assert!(!tunables("glibc.malloc.trim_threshold=131072"));
        assert!(!tunables("xglibc.malloc.arena_max=2"));
        assert!(!tunables(""));
    }

    #[test]
    fn without_either_variable_the_gateway_sets_the_cap() {
        assert!(!operator_caps_arenas(None, None));
    }
}
