//! The guest's `/init`: [`cocoon_agent::main`] (the agent as PID 1, its own spawn helper when
//! the agent re-runs it).

fn main() {
    cocoon_agent::main();
}
