#!/usr/bin/env python3
"""Splits a folded CPU profile of weir-gateway (inferno-collapse-perf --all) by component.

Each input is LABEL=FILE (FILE may be gzipped); each line of FILE is "thread;outermost;...;leaf COUNT". A sample
goes to one component:

1. kernel, if the leaf is a kernel frame (syscalls, the network stack, page faults, the
   scheduler), whatever called it (the vDSO's clock reads run in user mode: not kernel);
2. allocation, if the leaf is the allocator (malloc, free and their internals);
3. otherwise the first frame, walking from the leaf toward the thread's root, that belongs to
   a component (so a memcpy inside the validator is validation, a memcpy inside tonic's decoder
   is receive); librdkafka's own threads (named rdk:*) and rdkafka's polling thread (which
   runs the delivery callbacks) are the produce path as a whole;
4. other, if no frame does.

Prints Markdown tables of the percent of on-CPU time (perf's cpu-clock samples, weighted by
their period) per component per input, the same with kernel and allocation samples given to
the component that caused them (the first component frame above them), of the kernel's share by what it was doing, of the
threads' shares (tokio workers, librdkafka, others), and the heaviest leaf functions of the
first input. Used by scripts/bench/profile_gateway.sh; see docs/BENCHMARKS.md.
"""

import argparse
import collections
import gzip
import re
import sys

# Components in the order of the table; (name, pattern on a frame with its leading "<" and
# "&" removed, so that "<hyper::proto::h2::...> as Future>::poll" counts as hyper).
COMPONENTS = [
    (
        "receive (hyper, h2, tonic framing, the body copy)",
        r"^(hyper|h2|tonic|http|http_body|http_body_util|tower|tower_http|axum|hyper_util)::"
        r"|^weir_gateway::receivers::",
    ),
    ("validate/index (weir_proto::wire)", r"^weir_proto::"),
    (
        "policy and tail marking (weir_policy, gateway::policy, gateway::tail)",
        r"^weir_policy::|^weir_gateway::(policy|tail)::",
    ),
    (
        "grouping and encoding (weir_exporters::kafka records)",
        r"^weir_exporters::kafka::(records|split|trace_records)",
    ),
    (
        "produce call and delivery (rdkafka, librdkafka)",
        r"^rdkafka(_sys)?::|^rd_kafka_|^rd_|^weir_exporters::",
    ),
    ("span metrics and spool (gateway)", r"^weir_gateway::(spanmetrics|spool)::"),
    ("gateway pipeline and other Weir code", r"^weir_"),
    ("tokio scheduling (tasks, wake-ups, timers, channels)", r"^tokio::|^futures_|^futures::"),
]
KERNEL = "kernel (syscalls, network, scheduler)"
ALLOCATION = "allocation (malloc/free)"
OTHER = "other"
TABLE_ORDER = [COMPONENTS[0][0], COMPONENTS[1][0], COMPONENTS[2][0], COMPONENTS[3][0], COMPONENTS[4][0],
               ALLOCATION, COMPONENTS[7][0], KERNEL, COMPONENTS[5][0], COMPONENTS[6][0], OTHER]

ALLOCATOR = re.compile(
    r"^(malloc|free|cfree|calloc|realloc|__libc_(malloc|free|calloc|realloc)|_int_(malloc|free|realloc)"
    r"|malloc_consolidate|sysmalloc|unlink_chunk|tcache_\w+|__GI___libc_\w+|__rust_(alloc|dealloc|realloc)"
    r"|__rdl_\w+|alloc::alloc::\w+|je_\w+|mi_\w+|_mi_\w+|_rjem_\w+)"
)
COMPILED = [(name, re.compile(pattern)) for name, pattern in COMPONENTS]
RDKAFKA = COMPONENTS[4][0]
# rdkafka's FutureProducer polls librdkafka from a thread of its own ("producer polling
# thread", cut to 15 characters by the kernel).
RDKAFKA_THREADS = ("rdk:", "producer_pollin")

# What a kernel sample was doing, by the syscall (or exception) it is under; first match wins.
KERNEL_ACTIVITIES = [
    ("network send (sendmsg, writev, write)", r"^(__sys_sendmsg|do_writev|ksys_write|__x64_sys_(sendto|sendmsg|writev|write))_\[k\]"),
    ("network receive (recvfrom, recvmsg, read)", r"^(__x64_sys_(recvfrom|recvmsg|read|readv)|__sys_recvmsg|ksys_read)_\[k\]"),
    ("waits and wake-ups (futex, poll, epoll_wait, rescheduling)",
     r"^(__x64_sys_(futex|poll|ppoll|epoll_wait|epoll_pwait|sched_yield|nanosleep|clock_nanosleep)"
     r"|asm_sysvec_reschedule_ipi|exit_to_user_mode_loop)_\[k\]"),
    ("memory (page faults, madvise, mmap, brk)", r"^(asm_exc_page_fault|__x64_sys_(madvise|mmap|munmap|brk|mprotect))_\[k\]"),
    ("interrupts and softirqs", r"^(asm_sysvec_\w+|asm_common_interrupt)_\[k\]"),
]
KERNEL_COMPILED = [(name, re.compile(pattern)) for name, pattern in KERNEL_ACTIVITIES]
KERNEL_OTHER = "other kernel work"


def frame_name(frame: str) -> str:
    """The frame without the generic-impl brackets and references that hide its crate."""
    return frame.lstrip("<&").removeprefix("mut ").lstrip("<&")


def classify(thread: str, frames: list[str], owner: bool = False) -> str:
    """The component a sample belongs to (see the module doc); with owner, the component that
    caused it even when the leaf is the kernel or the allocator."""
    leaf = frames[-1] if frames else ""
    if not owner and leaf.endswith("_[k]") and not leaf.startswith("__vdso_"):
        return KERNEL
    if not owner and ALLOCATOR.match(frame_name(leaf)):
        return ALLOCATION
    if thread.startswith(RDKAFKA_THREADS):
        return RDKAFKA
    for frame in reversed(frames):
        name = frame_name(frame)
        for component, pattern in COMPILED:
            if pattern.match(name):
                return component
    return OTHER


def kernel_activity(frames: list[str]) -> str:
    """What a kernel sample was doing: the first kernel frame from the root that says so."""
    for frame in frames:
        if frame.endswith("_[k]"):
            for activity, pattern in KERNEL_COMPILED:
                if pattern.match(frame):
                    return activity
    return KERNEL_OTHER


def thread_group(thread: str) -> str:
    """Which kind of thread a sample ran on."""
    if thread.startswith("rdk:"):
        return "librdkafka threads (rdk:*)"
    if thread.startswith("producer_pollin"):
        return "rdkafka's polling thread (delivery callbacks)"
    if thread.startswith("tokio") or thread.startswith("weir"):
        return "tokio workers"
    return f"other threads ({thread})"


def read_folded(path: str):
    """Yields (thread, frames, count) per line of a folded file (gzipped if it ends in .gz)."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as folded:
        for line in folded:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            if not stack or not count.isdigit():
                continue
            thread, *frames = stack.split(";")
            yield thread, frames, int(count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("inputs", nargs="+", help="LABEL=FOLDED_FILE")
    parser.add_argument("--top", type=int, default=15, help="heaviest leaf functions to list")
    args = parser.parse_args()

    labels, splits, owners, kernels, threads, leaves, totals = [], [], [], [], [], [], []
    for spec in args.inputs:
        label, _, path = spec.partition("=")
        split, by_owner, by_kernel = collections.Counter(), collections.Counter(), collections.Counter()
        by_thread, by_leaf = collections.Counter(), collections.Counter()
        for thread, frames, count in read_folded(path):
            component = classify(thread, frames)
            split[component] += count
            by_owner[classify(thread, frames, owner=True)] += count
            if component == KERNEL:
                by_kernel[kernel_activity(frames)] += count
            by_thread[thread_group(thread)] += count
            by_leaf[(frame_name(frames[-1]) if frames else "?", classify(thread, frames))] += count
        labels.append(label)
        splits.append(split)
        owners.append(by_owner)
        kernels.append(by_kernel)
        threads.append(by_thread)
        leaves.append(by_leaf)
        totals.append(sum(split.values()) or 1)

    print("| component | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for component in TABLE_ORDER:
        cells = [f"{100 * s[component] / t:.1f}%" for s, t in zip(splits, totals)]
        print(f"| {component} | " + " | ".join(cells) + " |")
    print("| on-CPU seconds sampled | " + " | ".join(f"{t / 1e9:.2f}" for t in totals) + " |")
    print()
    print("| component, with the kernel and allocation it caused | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for component in TABLE_ORDER:
        if component in (KERNEL, ALLOCATION):
            continue
        cells = [f"{100 * o[component] / t:.1f}%" for o, t in zip(owners, totals)]
        print(f"| {component} | " + " | ".join(cells) + " |")
    print()
    print("| of which kernel | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for activity in [name for name, _ in KERNEL_ACTIVITIES] + [KERNEL_OTHER]:
        cells = [f"{100 * k[activity] / t:.1f}%" for k, t in zip(kernels, totals)]
        print(f"| {activity} | " + " | ".join(cells) + " |")
    print()
    print("| threads | " + " | ".join(labels) + " |")
    print("|---|" + "---:|" * len(labels))
    for group in sorted(set().union(*threads), key=lambda g: -threads[0][g]):
        cells = [f"{100 * th[group] / t:.1f}%" for th, t in zip(threads, totals)]
        print(f"| {group} | " + " | ".join(cells) + " |")
    print()
    print(f"Heaviest leaf functions, {labels[0]}:")
    print()
    print("| leaf function | component | samples |")
    print("|---|---|---:|")
    for (leaf, component), count in leaves[0].most_common(args.top):
        short = leaf if len(leaf) <= 90 else leaf[:87] + "..."
        print(f"| `{short}` | {component.split(' (')[0]} | {100 * count / totals[0]:.1f}% |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
