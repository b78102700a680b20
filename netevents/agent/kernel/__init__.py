"""Kernel plumbing shared by the agent sources; nothing here imports a source.

    btf.py        the kernel's BTF (/sys/kernel/btf/vmlinux) read in Python: enum values such
                  as the running kernel's skb_drop_reason names (no bpftool, no clang)
    ifaddr.py     a namespace's own addresses from rtnetlink (RTM_GETADDR dump, sans-IO parser)
                  and the RTMGRP_IPV4_IFADDR / RTMGRP_IPV6_IFADDR change notifications
    kallsyms.py   code locations as ``symbol+0xoff [module]``: PC -> symbol from /proc/kallsyms,
                  and the kernel's ``%pS`` text in the same form
    netlink.py    sans-IO netlink messages: nlmsghdr and nlattr packing and walking, requests,
                  NLMSG_ERROR/NLMSG_DONE, generic netlink and nlctrl; errors are NetlinkError
    netns.py      network namespaces: enter one (a thread, a block, a call), and name them
                  (inode -> /run/netns name or a process hint)
    procnet.py    /proc/net files opened once inside a namespace and re-read (ProcNetFiles), and
                  the formats several readers share: snmp/netstat pairs, fib_trie, if_inet6
    tracefs.py    private tracefs instances (TraceInstance: events, ring, pipes, overruns,
                  removal also at exit and on SIGTERM), mounting tracefs where it is not
                  mounted, and the boot-clock offset

Kernel constants sit next to the code that uses them, each with the header it comes from.
"""
