//! The agent's log: `tracing` events at warning level and above, on stderr (the guest's console,
//! which the host keeps as the console log). The agent's own lines use [`TARGET`], so they read
//! `LEVEL cocoon-agent: message`; libcontainer's carry its module paths.

/// The target of the agent's own events: the prefix its console lines have always had.
pub const TARGET: &str = "cocoon-agent";

/// Installs the subscriber; first thing PID 1 does. A second call changes nothing.
pub fn init() {
    // libcontainer explains its failures through `tracing` too: its warnings and errors go to
    // the console, where the host's console log keeps them.
    let _ = tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .without_time()
        .try_init();
}
