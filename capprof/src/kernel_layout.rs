//! The kernel facts the eBPF program is given at load time, read from kernel BTF.
//!
//! Rust eBPF code has no CO-RE relocations, so field offsets cannot be compiled in: they are read
//! here from the running kernel's BTF and written into the program's read-only globals.

use capprof_common::CapCapableAbi;

use crate::btf::{Btf, BtfError};

/// Field offsets and the `cap_capable` calling convention of the running kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLayout {
    pub task_real_cred_offset: u32,
    pub task_flags_offset: u32,
    pub task_comm_offset: u32,
    pub task_cgroups_offset: u32,
    pub css_set_dfl_cgrp_offset: u32,
    pub cgroup_kn_offset: u32,
    pub kernfs_node_id_offset: u32,
    pub kernfs_node_name_offset: u32,
    pub cred_euid_offset: u32,
    pub pt_regs_syscall_nr_offset: u32,
    pub cap_capable_abi: CapCapableAbi,
}

/// The `struct pt_regs` member that holds the number of the system call in progress.
#[cfg(target_arch = "x86_64")]
const PT_REGS_SYSCALL_NR: &str = "orig_ax";
#[cfg(target_arch = "aarch64")]
const PT_REGS_SYSCALL_NR: &str = "syscallno";
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
compile_error!(
    "capprof knows where the syscall number lives in pt_regs only on x86_64 and aarch64"
);

impl KernelLayout {
    /// Reads the layout from `btf`.
    pub fn from_btf(btf: &Btf) -> Result<Self, BtfError> {
        Ok(Self {
            task_real_cred_offset: btf.member_offset("task_struct", "real_cred")?,
            task_flags_offset: btf.member_offset("task_struct", "flags")?,
            task_comm_offset: btf.member_offset("task_struct", "comm")?,
            task_cgroups_offset: btf.member_offset("task_struct", "cgroups")?,
            css_set_dfl_cgrp_offset: btf.member_offset("css_set", "dfl_cgrp")?,
            cgroup_kn_offset: btf.member_offset("cgroup", "kn")?,
            kernfs_node_id_offset: btf.member_offset("kernfs_node", "id")?,
            kernfs_node_name_offset: btf.member_offset("kernfs_node", "name")?,
            cred_euid_offset: btf.member_offset("cred", "euid")?,
            pt_regs_syscall_nr_offset: btf.member_offset("pt_regs", PT_REGS_SYSCALL_NR)?,
            cap_capable_abi: cap_capable_abi(btf)?,
        })
    }
}

/// `cap_capable`'s fourth parameter was `int audit` before Linux 5.1 and is `unsigned int opts`
/// since. Distributions backport such changes, so the name in BTF decides, not the version.
pub fn cap_capable_abi(btf: &Btf) -> Result<CapCapableAbi, BtfError> {
    let params = btf.function_params(capprof_common::HOOKED_FUNCTION)?;
    match params.get(3).map(|(name, _)| name.as_str()) {
        Some("audit") => Ok(CapCapableAbi::LegacyAudit),
        _ => Ok(CapCapableAbi::Opts),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::tests::cap_capable_with_params;

    #[test]
    fn the_fourth_parameter_s_name_decides_the_abi() {
        let legacy = cap_capable_with_params(&["cred", "targ_ns", "cap", "audit"]);
        assert_eq!(
            cap_capable_abi(&legacy).unwrap(),
            CapCapableAbi::LegacyAudit
        );
        let current = cap_capable_with_params(&["cred", "targ_ns", "cap", "opts"]);
        assert_eq!(cap_capable_abi(&current).unwrap(), CapCapableAbi::Opts);
    }

    #[test]
    fn running_kernel_layout_is_plausible() {
        let Ok(btf) = Btf::from_kernel() else {
            crate::test_support::skip_unless_ci("no kernel BTF");
            return;
        };
        let layout = KernelLayout::from_btf(&btf).expect("layout");
        assert!(layout.task_real_cred_offset > layout.task_flags_offset);
        assert!(layout.cred_euid_offset > 0 && layout.cred_euid_offset < 64);
        #[cfg(target_arch = "x86_64")]
        assert_eq!(
            layout.pt_regs_syscall_nr_offset, 120,
            "orig_ax sits after 15 registers"
        );
        assert_eq!(layout.cap_capable_abi, CapCapableAbi::Opts);
    }
}
