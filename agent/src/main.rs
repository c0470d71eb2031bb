//! The guest's `/init`: the agent (the library's [`cocoon_agent::run`]).

fn main() {
    cocoon_agent::run();
}
