//! A flag found or set by its meaning ([`Concept`]) in the engine's own spelling: how the
//! planner and the memory estimate read the user's value and write the GPU share.

use super::{Concept, Engine};
use crate::config::{Arg, EngineArgs};

/// The last flag in `args` that sets `concept` for this engine, in any spelling it accepts
/// (say the user's own `--gpu-memory-utilization`, or `-c` for llama.cpp's context), for
/// the planner.
pub fn concept_arg(engine: Engine, args: &EngineArgs, concept: Concept) -> Option<&Arg> {
    let p = engine.profile();
    args.args
        .iter()
        .rev()
        .find(|a| p.concept_of(&a.name) == Some(concept))
}

/// Sets `concept` to `value` in the engine's own spelling, unless `args` already sets it;
/// `false` when the engine has no such flag (llama.cpp has no GPU-memory fraction) or the
/// user's value stays. The planner writes its GPU share with this.
pub fn set_concept(engine: Engine, args: &mut EngineArgs, concept: Concept, value: &str) -> bool {
    let Some(flag) = engine.profile().flag(concept) else {
        return false;
    };
    if concept_arg(engine, args, concept).is_some() {
        return false;
    }
    args.args.push(Arg::new(flag, &[value]));
    true
}
