"""``shoal-lab``: bring a several-host Shoal lab up on one machine, use it, tear it down.

Commands (root): ``up --hosts N [--runtime shoal|runc] [--heartbeat-period S] [--mtu N] [--no-daemons]``,
``down``, ``status``, ``exec hN -- CMD…``, ``demo [--replicas R]``, ``start hN`` / ``kill hN
[--signal N]`` (one host's shoald, for tests), ``image`` (build and push the busybox image).
Exit status 1 with ``shoal-lab: error: …`` when a step fails.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from deploy.lab import lab
from deploy.lab.demo import demo


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shoal-lab", description="A Shoal lab: hosts as network namespaces on one bridge.")
    sub = p.add_subparsers(dest="cmd", required=True)
    u = sub.add_parser("up", help="create the lab (runs `down` first)")
    u.add_argument("--hosts", type=int, default=3, help="number of hosts (default 3)")
    u.add_argument("--runtime", choices=["shoal", "runc"], default="shoal", help="OCI runtime of every shoald")
    u.add_argument("--heartbeat-period", type=float, default=None, metavar="S",
                   help="dispatcher heartbeat period in seconds (shoald default 5)")
    u.add_argument("--mtu", type=int, default=None, metavar="N",
                   help=f"MTU of the underlay links (the bridge and every host's veth), {lab.MTU_MIN}-{lab.MTU_MAX}; "
                        "default: the kernel's (1500)")
    u.add_argument("--no-daemons", action="store_true", help="network, registry and image only; no shoald")
    u.add_argument("--shoald-flag", action="append", default=[], metavar="FLAG",
                   help="extra flag passed to every shoald (repeatable)")
    sub.add_parser("down", help="remove everything the lab made (safe to run twice)")
    sub.add_parser("status", help="show the lab's hosts and what is left of it")
    e = sub.add_parser("exec", help="run a command inside a host (its netns, SHOAL_HOST set)")
    e.add_argument("host")
    e.add_argument("command", nargs=argparse.REMAINDER)
    d = sub.add_parser("demo", help="init a swarm, join the hosts, run `web` and ask each task who it is")
    d.add_argument("--replicas", type=int, default=3)
    s = sub.add_parser("start", help="start a host's shoald again with its recorded flags")
    s.add_argument("host")
    k = sub.add_parser("kill", help="kill a host's shoald")
    k.add_argument("host")
    k.add_argument("--signal", type=int, default=int(signal.SIGKILL))
    sub.add_parser("image", help="build the busybox image and push it to the lab registry")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``shoal-lab``; returns the exit status."""
    args = _parser().parse_args(argv)
    try:
        if args.cmd == "up":
            lab.up(args.hosts, args.runtime, args.heartbeat_period, args.shoald_flag, daemons=not args.no_daemons,
                   mtu=args.mtu)
        elif args.cmd == "down":
            return 1 if lab.down() else 0
        elif args.cmd == "status":
            st = lab.LabState.load()
            if st is None:
                print("no lab")
            else:
                for h in st.hosts:
                    alive = "running" if h.pid and lab._alive(h.pid) else "stopped"
                    print(f"{h.name}  {h.ip}  netns {h.netns}  shoald pid {h.pid} ({alive})  {lab.socket_path(h.name)}")
            left = lab.check_clean()
            print(f"{len(left)} lab objects exist")
        elif args.cmd == "exec":
            cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
            if not cmd:
                raise lab.LabError("exec needs a command: shoal-lab exec h1 -- shoal node ls")
            argv2, env = lab.exec_argv(args.host, cmd)
            os.execvpe(argv2[0], argv2, env)
        elif args.cmd == "demo":
            demo(args.replicas)
        elif args.cmd in ("start", "kill"):
            st = lab.LabState.load()
            if st is None:
                raise lab.LabError("no lab is up")
            h = st.host(args.host)
            if args.cmd == "start":
                lab.start_daemon(st, h)
            else:
                lab.kill_daemon(st, h, args.signal)
        elif args.cmd == "image":
            lab.ensure_image()
    except lab.LabError as e:
        print(f"shoal-lab: error: {e}", file=sys.stderr)
        if args.cmd in ("up", "demo"):
            print("shoal-lab: the lab is left as it is for a look (logs in /var/log/shoal-lab); "
                  "remove it with `make down` (= shoal-lab down)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `shoal-lab status | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    return 0


if __name__ == "__main__":
    sys.exit(main())
