//! VMMs are started from one long-lived thread: a VMM dies with the thread that started it
//! (PR_SET_PDEATHSIG), and ttrpc's worker threads come and go.

use std::sync::mpsc;
use std::sync::Mutex;

use anyhow::{anyhow, Result};
use cocoon_common::lock;
use cocoon_sandbox::{Vm, VmOptions};

type Job = (VmOptions, mpsc::Sender<Result<Vm>>);

pub struct Spawner {
    jobs: Mutex<mpsc::Sender<Job>>,
}

impl Spawner {
    pub fn start() -> Self {
        let (jobs, incoming) = mpsc::channel::<Job>();
        std::thread::spawn(move || {
            for (options, reply) in incoming {
                let _ = reply.send(Vm::spawn(&options).map_err(anyhow::Error::from));
            }
            // The shim is going away: park, so VMMs still running are not killed by our exit
            // before the shim has shut them down.
            loop {
                std::thread::park();
            }
        });
        Self {
            jobs: Mutex::new(jobs),
        }
    }

    pub fn spawn(&self, options: VmOptions) -> Result<Vm> {
        let (reply, answer) = mpsc::channel();
        lock(&self.jobs)
            .send((options, reply))
            .map_err(|_| anyhow!("the VMM spawner thread is gone"))?;
        answer
            .recv()
            .map_err(|_| anyhow!("the VMM spawner thread is gone"))?
    }
}
