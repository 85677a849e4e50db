//! The default seccomp profile of every sandbox, written as data: allow everything except the
//! syscalls that reach kernel-wide state or are common escape and exploit surfaces (the set
//! Docker's default profile keeps from unprivileged containers), which fail with `EPERM`.
//! `clone` with `CLONE_NEWUSER` is refused and `clone3` returns `ENOSYS` so libc falls back to
//! `clone`, where the flag can be checked.

use oci_spec::runtime::{
    Arch, LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator,
    LinuxSyscall,
};

/// Syscalls that fail with `EPERM` in every sandbox, grouped by why.
pub const DENIED_SYSCALLS: &[(&str, &[&str])] = &[
    (
        "kernel modules and kexec",
        &[
            "init_module",
            "finit_module",
            "delete_module",
            "create_module",
            "kexec_load",
            "kexec_file_load",
        ],
    ),
    (
        "system-wide state: clock, swap, reboot, accounting, quotas",
        &[
            "reboot",
            "swapon",
            "swapoff",
            "acct",
            "settimeofday",
            "clock_settime",
            "clock_adjtime",
            "adjtimex",
            "stime",
            "quotactl",
            "quotactl_fd",
            "syslog",
            "nfsservctl",
            "sysfs",
            "_sysctl",
            "uselib",
            "ustat",
            "lookup_dcookie",
            "get_kernel_syms",
            "query_module",
            "vhangup",
        ],
    ),
    (
        "mount namespaces and file handles",
        &[
            "mount",
            "umount",
            "umount2",
            "pivot_root",
            "move_mount",
            "open_tree",
            "fsopen",
            "fsconfig",
            "fsmount",
            "fspick",
            "mount_setattr",
            "open_by_handle_at",
            "name_to_handle_at",
        ],
    ),
    ("namespace creation and entry", &["unshare", "setns"]),
    ("kernel keyrings", &["add_key", "request_key", "keyctl"]),
    (
        "profiling and other processes' memory",
        &[
            "process_vm_readv",
            "process_vm_writev",
            "kcmp",
            "perf_event_open",
            "bpf",
            "fanotify_init",
            "userfaultfd",
            "pidfd_getfd",
        ],
    ),
    (
        "NUMA placement and raw I/O ports",
        &[
            "mbind",
            "set_mempolicy",
            "move_pages",
            "migrate_pages",
            "iopl",
            "ioperm",
        ],
    ),
    (
        "io_uring (bypasses seccomp for the operations it carries)",
        &["io_uring_setup", "io_uring_enter", "io_uring_register"],
    ),
];

const CLONE_NEWUSER: u64 = 0x1000_0000;

/// The profile for a sandbox run by `handler`.
///
/// runsc (gVisor) enforces the OCI profile inside its own kernel, and the Debian 2022 build
/// does not honour the argument filter of the `clone` rule: it would refuse every `clone`, so
/// no thread could start. Under runsc both clone rules are left out: gVisor keeps user
/// namespaces inside its own kernel, and it has no `clone3` (libc gets `ENOSYS` and falls back
/// to `clone` there anyway).
pub fn profile_for(handler: crate::HandlerKind) -> LinuxSeccomp {
    let mut profile = default_profile();
    if handler == crate::HandlerKind::Runsc
        && let Some(syscalls) = profile.syscalls().clone()
    {
        let kept = syscalls
            .into_iter()
            .filter(|s| !s.names().iter().any(|n| n == "clone" || n == "clone3"))
            .collect();
        profile.set_syscalls(Some(kept));
    }
    profile
}

/// The profile as an OCI `linux.seccomp` section.
pub fn default_profile() -> LinuxSeccomp {
    let eperm = libc_errno(1);
    let mut syscalls: Vec<LinuxSyscall> = DENIED_SYSCALLS
        .iter()
        .map(|(_, names)| {
            let mut s = LinuxSyscall::default();
            s.set_names(names.iter().map(|n| n.to_string()).collect());
            s.set_action(LinuxSeccompAction::ScmpActErrno);
            s.set_errno_ret(Some(eperm));
            s
        })
        .collect();

    let mut clone = LinuxSyscall::default();
    clone.set_names(vec!["clone".into()]);
    clone.set_action(LinuxSeccompAction::ScmpActErrno);
    clone.set_errno_ret(Some(eperm));
    let arg = LinuxSeccompArgBuilder::default()
        .index(0usize)
        .value(CLONE_NEWUSER)
        .value_two(CLONE_NEWUSER)
        .op(LinuxSeccompOperator::ScmpCmpMaskedEq)
        .build()
        .expect("all fields of the clone rule are set");
    clone.set_args(Some(vec![arg]));
    syscalls.push(clone);

    let mut clone3 = LinuxSyscall::default();
    clone3.set_names(vec!["clone3".into()]);
    clone3.set_action(LinuxSeccompAction::ScmpActErrno);
    clone3.set_errno_ret(Some(libc_errno(38))); // ENOSYS
    syscalls.push(clone3);

    let mut p = LinuxSeccomp::default();
    p.set_default_action(LinuxSeccompAction::ScmpActAllow);
    p.set_architectures(Some(vec![
        Arch::ScmpArchX86_64,
        Arch::ScmpArchX86,
        Arch::ScmpArchX32,
    ]));
    p.set_syscalls(Some(syscalls));
    p
}

fn libc_errno(n: u32) -> u32 {
    // Errno values are the same on every Linux architecture we list.
    n
}

#[cfg(test)]
mod tests {

    #[test]
    fn runsc_profiles_leave_thread_creation_to_gvisor() {
        let names = |p: &LinuxSeccomp| -> Vec<String> {
            p.syscalls()
                .clone()
                .unwrap_or_default()
                .iter()
                .flat_map(|s| s.names().clone())
                .collect()
        };
        let crun = names(&profile_for(crate::HandlerKind::Crun));
        let runsc = names(&profile_for(crate::HandlerKind::Runsc));
        assert!(crun.iter().any(|n| n == "clone") && crun.iter().any(|n| n == "clone3"));
        assert!(!runsc.iter().any(|n| n == "clone" || n == "clone3"));
        assert!(
            runsc.iter().any(|n| n == "keyctl"),
            "the rest of the deny-list stays"
        );
    }

    use super::*;

    #[test]
    fn profile_denies_dangerous_syscalls() {
        let p = default_profile();
        let names: Vec<String> = p
            .syscalls()
            .as_ref()
            .unwrap()
            .iter()
            .flat_map(|s| s.names().clone())
            .collect();
        for must in ["kexec_load", "mount", "bpf", "unshare", "keyctl", "clone3"] {
            assert!(names.iter().any(|n| n == must), "{must} not denied");
        }
        assert_eq!(p.default_action(), LinuxSeccompAction::ScmpActAllow);
    }
}
