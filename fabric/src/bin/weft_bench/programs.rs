//! Finding the other programs a benchmark runs beside Weft (etcd, nats-server).

use std::path::{Path, PathBuf};

/// Where to look for a program.
pub struct Program<'a> {
    /// Its file name on `PATH` (`etcd`).
    pub name: &'a str,
    /// The command-line flag that names it (`--etcd`).
    pub flag: &'a str,
    /// The environment variable that names it (`ETCD`).
    pub env: &'a str,
    /// How to install one, for the error when there is none.
    pub hint: &'a str,
}

impl Program<'_> {
    /// The binary to use: `explicit` (the flag's value), the environment variable, or one
    /// on `PATH`, in that order; a flag or variable that names no file is an error naming it
    /// (the caller asked for it), and so is no binary on `PATH`, with the hint.
    pub fn find(&self, explicit: Option<&Path>) -> Result<PathBuf, String> {
        self.find_in(explicit, std::env::var_os(self.env), std::env::var_os("PATH"))
    }

    fn find_in(
        &self,
        explicit: Option<&Path>,
        env: Option<std::ffi::OsString>,
        path: Option<std::ffi::OsString>,
    ) -> Result<PathBuf, String> {
        let named =
            |p: PathBuf, by: String| if p.is_file() { Ok(p) } else { Err(format!("{by} is not a file")) };
        if let Some(p) = explicit {
            return named(p.to_owned(), format!("{} {}", self.flag, p.display()));
        }
        if let Some(p) = env.map(PathBuf::from) {
            let by = format!("${} ({})", self.env, p.display());
            return named(p, by);
        }
        path.iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join(self.name))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                format!("no {} on PATH, in ${} or {}: {}", self.name, self.env, self.flag, self.hint)
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOOL: Program<'static> = Program { name: "tool", flag: "--tool", env: "TOOL", hint: "install it" };

    #[test]
    fn the_flag_beats_the_environment_which_beats_path() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b, bin) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("bin"));
        std::fs::create_dir(&bin).unwrap();
        for f in [&a, &b, &bin.join("tool")] {
            std::fs::write(f, "").unwrap();
        }
        let path = Some(bin.clone().into_os_string());
        assert_eq!(TOOL.find_in(Some(&a), Some(b.clone().into()), path.clone()), Ok(a));
        assert_eq!(TOOL.find_in(None, Some(b.clone().into()), path.clone()), Ok(b));
        assert_eq!(TOOL.find_in(None, None, path), Ok(bin.join("tool")));
    }

    #[test]
    fn a_name_that_is_no_file_is_an_error_naming_it_and_none_anywhere_gives_the_hint() {
        let err = TOOL.find_in(Some(Path::new("no/such/tool")), None, None).unwrap_err();
        assert_eq!(err, "--tool no/such/tool is not a file");
        let err = TOOL.find_in(None, Some("no/such/env".into()), None).unwrap_err();
        assert_eq!(err, "$TOOL (no/such/env) is not a file");
        let err = TOOL.find_in(None, None, Some("no/such/dir".into())).unwrap_err();
        assert_eq!(err, "no tool on PATH, in $TOOL or --tool: install it");
    }
}
