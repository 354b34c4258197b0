//! Engine arguments: split a shell-quoted string, recognise flags in every spelling the
//! model's server accepts (`--flag v`, `--flag=v`, vLLM's `--flag_name`, short aliases such as
//! `-tp`: the spellings come from [`crate::engines`]), and merge `VLLM_PARAMS` under a model's
//! own `params`.

use super::ConfigError;

/// One flag and the values that follow it, as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Arg {
    /// Canonical long name (`--tensor-parallel-size`), whatever spelling was used.
    pub name: String,
    /// The flag as written (`-tp`, `--max_model_len`).
    pub spelling: String,
    /// The values after the flag; one value for the `--flag=value` form.
    pub values: Vec<String>,
    /// True for the `--flag=value` form, so it is written back the same way.
    pub inline: bool,
}

impl Arg {
    /// A flag in its canonical spelling with the given values.
    pub fn new(name: &str, values: &[&str]) -> Self {
        Arg {
            name: name.to_string(),
            spelling: name.to_string(),
            values: values.iter().map(|v| v.to_string()).collect(),
            inline: false,
        }
    }

    /// The command-line tokens for this flag.
    pub fn tokens(&self) -> Vec<String> {
        if self.inline {
            vec![format!("{}={}", self.spelling, self.values.join(" "))]
        } else {
            let mut out = Vec::with_capacity(1 + self.values.len());
            out.push(self.spelling.clone());
            out.extend(self.values.iter().cloned());
            out
        }
    }
}

/// An ordered list of engine flags.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EngineArgs {
    /// The flags in command-line order.
    pub args: Vec<Arg>,
}

/// The canonical name of a flag token as vLLM reads it: aliases expanded, `_` turned into
/// `-`. Other servers: [`crate::engines::Profile::canonical`].
pub fn canonical(flag: &str) -> String {
    crate::engines::Engine::Vllm.profile().canonical(flag)
}

/// A token that starts a flag, as opposed to a value (negative numbers are values).
fn is_flag(token: &str) -> bool {
    let mut chars = token.chars();
    chars.next() == Some('-')
        && match chars.next() {
            None => false,
            Some(c) => !(c.is_ascii_digit() || c == '.'),
        }
}

impl EngineArgs {
    /// Splits and parses a shell-quoted argument string in vLLM's vocabulary. `origin` names
    /// the field or variable in errors (`models[0].params`, `VLLM_PARAMS`).
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::parse_for(text, origin, crate::engines::Engine::Vllm.profile())
    }

    /// Like [`EngineArgs::parse`], reading flag names as `profile`'s server does (its
    /// aliases, its separators).
    pub fn parse_for(
        text: &str,
        origin: &str,
        profile: &crate::engines::Profile,
    ) -> Result<Self, ConfigError> {
        let err = |problem: String| ConfigError::Params {
            origin: origin.to_string(),
            problem,
        };
        let tokens = shlex::split(text).ok_or_else(|| {
            err("unterminated quote or trailing backslash; close every ' and \"".to_string())
        })?;
        // shlex drops an unquoted `#` and the rest of the line as a comment: refuse that
        // rather than silently losing arguments.
        let kept_hashes: usize = tokens.iter().map(|t| t.matches('#').count()).sum();
        if kept_hashes < text.matches('#').count() {
            return Err(err(
                "an unquoted '#' starts a shell comment and would drop the rest; quote it"
                    .to_string(),
            ));
        }
        let mut args: Vec<Arg> = Vec::new();
        for token in tokens {
            if is_flag(&token) {
                let (flag, value) = match token.split_once('=') {
                    Some((flag, value)) => (flag.to_string(), Some(value.to_string())),
                    None => (token.clone(), None),
                };
                args.push(Arg {
                    name: profile.canonical(&flag),
                    spelling: flag,
                    inline: value.is_some(),
                    values: value.into_iter().collect(),
                });
            } else {
                match args.last_mut() {
                    Some(last) if !last.inline => last.values.push(token),
                    _ => {
                        return Err(err(format!(
                            "unexpected value {token:?} without a flag before it; engine \
                             arguments are --flag [value] pairs"
                        )));
                    }
                }
            }
        }
        Ok(EngineArgs { args })
    }

    /// The first flag with this canonical name.
    pub fn get(&self, name: &str) -> Option<&Arg> {
        self.args.iter().find(|a| a.name == name)
    }

    /// Whether a flag with this canonical name is present.
    pub fn has(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Removes every flag with this canonical name and returns them.
    pub fn take(&mut self, name: &str) -> Vec<Arg> {
        let (taken, kept) = std::mem::take(&mut self.args)
            .into_iter()
            .partition(|a| a.name == name);
        self.args = kept;
        taken
    }

    /// `global` under `own`: every flag of `global` that `own` does not set, then `own`.
    pub fn merged(global: &EngineArgs, own: &EngineArgs) -> EngineArgs {
        let mut args: Vec<Arg> = global
            .args
            .iter()
            .filter(|g| !own.has(&g.name))
            .cloned()
            .collect();
        args.extend(own.args.iter().cloned());
        EngineArgs { args }
    }

    /// A positive integer flag (`--tensor-parallel-size` and friends); 1 when absent.
    pub fn positive_int(&self, name: &str, origin: &str) -> Result<u32, ConfigError> {
        let Some(arg) = self.args.iter().rev().find(|a| a.name == name) else {
            return Ok(1);
        };
        let value = arg.values.first().map(String::as_str).unwrap_or("");
        match value.parse::<u32>() {
            Ok(n) if n > 0 && arg.values.len() == 1 => Ok(n),
            _ => Err(ConfigError::Params {
                origin: origin.to_string(),
                problem: format!(
                    "{} must be a positive integer, got {:?}",
                    arg.spelling,
                    arg.values.join(" ")
                ),
            }),
        }
    }

    /// The values of every flag with this canonical name (for tests and messages).
    pub fn take_clone(&self, name: &str) -> Vec<Vec<String>> {
        self.args
            .iter()
            .filter(|a| a.name == name)
            .map(|a| a.values.clone())
            .collect()
    }

    /// All tokens, in order.
    pub fn tokens(&self) -> Vec<String> {
        self.args.iter().flat_map(Arg::tokens).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> EngineArgs {
        EngineArgs::parse(s, "params").unwrap()
    }

    #[test]
    fn spellings_share_one_canonical_name() {
        let a = parse("-tp 2 --max_model_len=4096 --enforce-eager --seed -1");
        let names: Vec<_> = a.args.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "--tensor-parallel-size",
                "--max-model-len",
                "--enforce-eager",
                "--seed"
            ]
        );
        assert_eq!(a.get("--seed").unwrap().values, ["-1"]);
        assert_eq!(
            a.tokens(),
            [
                "-tp",
                "2",
                "--max_model_len=4096",
                "--enforce-eager",
                "--seed",
                "-1"
            ]
        );
    }

    #[test]
    fn own_flags_win_over_global_in_any_spelling() {
        let global = parse("--tensor-parallel-size=4 --trust-remote-code --max-model-len 2048");
        let own = parse("-tp 2 --dtype half");
        let merged = EngineArgs::merged(&global, &own);
        assert_eq!(
            merged.tokens(),
            [
                "--trust-remote-code",
                "--max-model-len",
                "2048",
                "-tp",
                "2",
                "--dtype",
                "half"
            ]
        );
        assert_eq!(
            merged
                .positive_int("--tensor-parallel-size", "params")
                .unwrap(),
            2
        );
    }

    #[test]
    fn quoted_values_keep_their_spaces() {
        let a = parse(r#"--chat-template "{{ a }} b" --served-model-name m1 m2"#);
        assert_eq!(a.get("--chat-template").unwrap().values, ["{{ a }} b"]);
        assert_eq!(a.get("--served-model-name").unwrap().values, ["m1", "m2"]);
    }

    #[test]
    fn bad_strings_are_refused_with_the_origin() {
        let e = EngineArgs::parse("--chat-template 'oops", "models[1].params").unwrap_err();
        assert_eq!(
            e.to_string(),
            "models[1].params: unterminated quote or trailing backslash; close every ' and \""
        );
        let e = EngineArgs::parse("--x 1 # comment", "VLLM_PARAMS").unwrap_err();
        assert!(
            e.to_string().starts_with("VLLM_PARAMS: an unquoted '#'"),
            "{e}"
        );
        assert!(EngineArgs::parse("--x '#1'", "p").is_ok());
        let e = EngineArgs::parse("model-name --x 1", "PARAMS").unwrap_err();
        assert!(
            e.to_string().contains("unexpected value \"model-name\""),
            "{e}"
        );
    }

    #[test]
    fn parallel_sizes_must_be_positive_integers() {
        for bad in ["-tp abc", "--tensor-parallel-size=0", "-tp", "-tp 1 2"] {
            let e = parse(bad)
                .positive_int("--tensor-parallel-size", "models[0].params")
                .unwrap_err();
            assert!(
                e.to_string()
                    .starts_with("models[0].params: -tp must be a positive integer")
                    || e.to_string().starts_with(
                        "models[0].params: --tensor-parallel-size must be a positive integer"
                    ),
                "{bad}: {e}"
            );
        }
        assert_eq!(
            parse("")
                .positive_int("--pipeline-parallel-size", "p")
                .unwrap(),
            1
        );
    }
}
