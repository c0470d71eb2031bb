//! The guest's `/init`: the agent (the library's [`cocoon_agent::run`]); run again by the agent
//! as `cocoon-agent spawn-helper <request>`, the helper that builds one container process
//! ([`cocoon_agent::spawner`]).

use cocoon_agent::spawner;

fn main() {
    // Never as PID 1: what the kernel passes /init comes from the boot command line. As
    // anything else it is only the helper: as the agent it would mount the guest's /proc, /run,
    // /tmp... over this host's.
    if std::process::id() != 1 {
        let mut args = std::env::args_os().skip(1);
        if args.next().is_some_and(|a| a == spawner::HELPER_COMMAND) {
            std::process::exit(spawner::helper_main(args.next()));
        }
        eprintln!(
            "cocoon-agent is the guest's /init and runs only as PID 1 inside a cocoon VM; \
             to run a container use `cocoon run`"
        );
        std::process::exit(2);
    }
    cocoon_agent::run();
}
