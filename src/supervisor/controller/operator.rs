//! Operators' commands (admin API `start`, `stop`, `restart`): what each does to a model
//! in each phase.

use crate::config::LoadMode;
use crate::state::Phase;
use crate::supervisor::commands::{Accepted, Command, CommandError};
use crate::supervisor::orders::{Order, Rest};

use super::{Controller, Pending};

impl Controller {
    pub(super) fn command(&mut self, command: Command) -> Result<Accepted, CommandError> {
        if *self.shutdown.borrow() {
            return Err(CommandError::ShuttingDown);
        }
        let name = match &command {
            Command::Restart(n) | Command::Stop(n) | Command::Start(n) => n.clone(),
        };
        let index = self.find(&name)?;
        let (phase, load) = {
            let s = self.snapshot();
            (s.models[index].state, s.models[index].load)
        };
        let has_engine = matches!(
            phase,
            Phase::Starting
                | Phase::Ready
                | Phase::Sleeping
                | Phase::Waking
                | Phase::Restarting
                | Phase::Stopping
        );
        match command {
            Command::Stop(_) => {
                self.pending.retain(|p| p.index != index);
                self.launching.remove(&index);
                self.order(index, Order::Stop(Rest::Stopped));
                tracing::info!(model = %name, "stopping it (operator)");
            }
            Command::Restart(_) if has_engine && load == LoadMode::Always => {
                self.order(index, Order::Restart);
                tracing::info!(model = %name, "restarting it (operator)");
            }
            Command::Restart(_) if has_engine => {
                // An on-demand engine gets its room back through the ledger: stop, then
                // load again.
                self.order(index, Order::Stop(Rest::Unloaded));
                self.pending.retain(|p| p.index != index);
                self.pending.push(Pending {
                    index,
                    sticky: true,
                    after_stop: true,
                });
                tracing::info!(model = %name, "restarting it (operator)");
            }
            Command::Restart(_) | Command::Start(_) => {
                if !has_engine || phase == Phase::Stopping {
                    self.want(index, true);
                    tracing::info!(model = %name, "starting it (operator)");
                }
            }
        }
        Ok(Accepted {
            model: name,
            state: phase,
        })
    }
}
