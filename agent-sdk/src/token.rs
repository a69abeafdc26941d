//! Bearer tokens: [`Token`] is the secret a caller presents to a node with auth on, and
//! [`Authorized`] the channel wrapper that puts it on every request.
//!
//! ```text
//!   Client / Worker ── every gRPC request (unary, streaming, Listen, each failover) ──► node
//!                      authorization: Bearer weft_<id>_<secret>
//!   node ── UNAUTHENTICATED (no, unknown, expired, revoked token) ──► Error::Unauthenticated
//!        ── PERMISSION_DENIED (the token's role or scopes lack it)  ──► Error::PermissionDenied
//! ```
//!
//! Neither refusal is retried on another node: every node would give the same answer. The
//! secret never appears in `Debug` or `Display` output, logs or errors; only the token's id
//! (the public part before the secret) may.
//!
//! # Where the token comes from
//!
//! One rule for every Weft program (the SDK's builders, the `weft` CLI, `weft-scaler`):
//! - a token given explicitly (a builder's [`token`](crate::ClientBuilder::token), a flag such
//!   as `--auth-token` or `--auth-token-file`, a configuration) is used, and the environment
//!   is not read;
//! - otherwise the environment's: `WEFT_TOKEN` (the text) or `WEFT_TOKEN_FILE` (a file holding
//!   it). Both set is an error that names both, as are two explicit sources at once (both
//!   flags).
//!
//! [`Token::explicit_or_env`] applies it to a builder's token, [`from_flags_or_env`] to a
//! program's two flags.

use std::path::Path;
use std::task::{Context, Poll};

use tonic::codegen::http::{self, HeaderValue, header::AUTHORIZATION};

use crate::Error;

/// Environment variables [`Token::from_env`] reads (workers read them in
/// [`WorkerBuilder::from_env`](crate::WorkerBuilder::from_env)).
pub mod env {
    /// The token text (`weft_<id>_<secret>`).
    pub const TOKEN: &str = "WEFT_TOKEN";
    /// A file holding the token text (surrounding whitespace is ignored): keeps the secret
    /// out of the process's environment, which other processes of the same user may read.
    pub const TOKEN_FILE: &str = "WEFT_TOKEN_FILE";
}

/// Largest token file read; a token is well under a hundred bytes.
pub const MAX_TOKEN_FILE_BYTES: u64 = 4096;
/// Longest token text accepted.
pub const MAX_TOKEN_BYTES: usize = 1024;

/// A bearer token: sent as `authorization: Bearer <token>` on every request to the fabric.
/// Cheap to clone; its `Debug` and `Display` show only the token's id, never the secret.
///
/// ```
/// use weft_agent::Token;
/// let token = Token::new("weft_0123456789ab_00112233445566778899aabbccddeeff")?;
/// assert_eq!(token.id(), Some("0123456789ab"));
/// assert!(!format!("{token:?} {token}").contains("00112233"));
/// # Ok::<(), weft_agent::Error>(())
/// ```
#[derive(Clone)]
pub struct Token {
    /// `Bearer <token>`, marked sensitive (HTTP/2 never indexes it in its header tables).
    header: HeaderValue,
}

impl Token {
    /// The token with this text (as `weft tokens create` printed it). Surrounding whitespace
    /// is ignored; the text must be printable ASCII without spaces. The error never repeats
    /// the text.
    pub fn new(text: impl AsRef<str>) -> Result<Self, Error> {
        let text = text.as_ref().trim();
        if text.is_empty() {
            return Err(Error::Usage("the token is empty".into()));
        }
        if text.len() > MAX_TOKEN_BYTES {
            return Err(Error::Usage(format!(
                "the token is {} bytes long; at most {MAX_TOKEN_BYTES}",
                text.len()
            )));
        }
        if let Some(at) = text.find(|c: char| !c.is_ascii_graphic()) {
            return Err(Error::Usage(format!(
                "the token has a character that cannot be sent in a header at byte {at} (tokens are \
                 printable ASCII without spaces, as in weft_<id>_<secret>)"
            )));
        }
        let mut header = HeaderValue::try_from(format!("Bearer {text}"))
            .map_err(|_| Error::Usage("the token cannot be sent in a header".into()))?;
        header.set_sensitive(true);
        Ok(Self { header })
    }

    /// The token in the file at `path` (at most [`MAX_TOKEN_FILE_BYTES`], whitespace around it
    /// ignored). The error names the file.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self, Error> {
        let path = path.as_ref();
        let bad = |why: String| Error::Usage(format!("token file {}: {why}", path.display()));
        let meta = std::fs::metadata(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        if !meta.is_file() {
            return Err(bad("not a file".into()));
        }
        if meta.len() > MAX_TOKEN_FILE_BYTES {
            return Err(bad(format!(
                "{} bytes; a token file holds at most {MAX_TOKEN_FILE_BYTES}",
                meta.len()
            )));
        }
        let bytes = std::fs::read(path).map_err(|e| bad(format!("cannot read it: {e}")))?;
        let text = String::from_utf8(bytes).map_err(|_| bad("not text".into()))?;
        Self::new(&text).map_err(|e| bad(e.to_string()))
    }

    /// The token of the environment ([`env`]): `WEFT_TOKEN`, or the file `WEFT_TOKEN_FILE`
    /// names (not both: that is an error naming both). `None` when neither is set (or both
    /// are empty).
    pub fn from_env() -> Result<Option<Self>, Error> {
        Self::from_vars(env_var)
    }

    /// `explicit` when given, else the environment's ([`Token::from_env`]): the rule of the
    /// [module](self#where-the-token-comes-from). With an explicit token the environment is
    /// not read.
    ///
    /// ```
    /// use weft_agent::Token;
    /// let mine = Token::new("weft_0123456789ab_00112233445566778899aabbccddeeff")?;
    /// let chosen = Token::explicit_or_env(Some(mine))?.expect("the explicit token");
    /// assert_eq!(chosen.id(), Some("0123456789ab"));
    /// # Ok::<(), weft_agent::Error>(())
    /// ```
    pub fn explicit_or_env(explicit: Option<Token>) -> Result<Option<Self>, Error> {
        Self::explicit_or_vars(explicit, env_var)
    }

    /// [`explicit_or_env`](Self::explicit_or_env) over any source of variables.
    pub(crate) fn explicit_or_vars(
        explicit: Option<Token>,
        var: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, Error> {
        match explicit {
            Some(token) => Ok(Some(token)),
            None => Self::from_vars(var),
        }
    }

    /// [`from_env`](Self::from_env) over any source of variables.
    pub(crate) fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<Self>, Error> {
        Ok(sourced_from_vars(var)?.map(|(token, _)| token))
    }

    /// The token's text, for a caller's own requests (an HTTP client, say). Keep it out of
    /// logs.
    pub fn secret(&self) -> &str {
        self.text()
    }

    /// The token's id, the public part of `weft_<id>_<secret>` (what `weft tokens list` and
    /// the audit trail show), if the text has that form.
    pub fn id(&self) -> Option<&str> {
        let (id, secret) = self.text().strip_prefix("weft_")?.split_once('_')?;
        (!id.is_empty() && !secret.is_empty()).then_some(id)
    }

    /// The `authorization` header value (`Bearer <token>`), marked sensitive.
    pub fn header(&self) -> HeaderValue {
        self.header.clone()
    }

    fn text(&self) -> &str {
        // Built from a `&str` in `new`, so it is ASCII.
        self.header.to_str().unwrap_or_default().trim_start_matches("Bearer ")
    }
}

/// A variable of the process's environment; set but empty (or blank) counts as unset.
fn env_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The environment's token and which variable gave it (`WEFT_TOKEN`, `WEFT_TOKEN_FILE PATH`).
fn sourced_from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Option<(Token, String)>, Error> {
    match (var(env::TOKEN), var(env::TOKEN_FILE)) {
        (Some(_), Some(_)) => Err(Error::Usage(format!(
            "{} and {} are both set: set one (the file keeps the secret out of the environment)",
            env::TOKEN,
            env::TOKEN_FILE
        ))),
        (Some(text), None) => Token::new(text)
            .map(|t| Some((t, env::TOKEN.to_owned())))
            .map_err(|e| Error::Usage(format!("{}: {e}", env::TOKEN))),
        (None, Some(path)) => Token::from_file(path.trim())
            .map(|t| Some((t, format!("{} {}", env::TOKEN_FILE, path.trim()))))
            .map_err(|e| Error::Usage(format!("{}: {e}", env::TOKEN_FILE))),
        (None, None) => Ok(None),
    }
}

/// A program's token from its two flags, `text` (the token) and `file` (a file holding it),
/// named `flags` (`["--auth-token", "--auth-token-file"]`), else from the environment: the
/// rule of the [module](self#where-the-token-comes-from). Both flags given is an error naming
/// both; a flag wins over the environment, which is then not read. Returns the token and
/// where it came from (`--auth-token-file PATH`, `WEFT_TOKEN`, ...) for messages; errors name
/// the flag or the variable, never the secret.
///
/// ```
/// # fn demo() -> Result<(), weft_agent::Error> {
/// let flags = ["--auth-token", "--auth-token-file"];
/// let text = "weft_0123456789ab_00112233445566778899aabbccddeeff";
/// let (token, from) = weft_agent::token::from_flags_or_env(Some(text), None, flags)?.unwrap();
/// assert_eq!((token.id(), from.as_str()), (Some("0123456789ab"), "--auth-token"));
/// let both = weft_agent::token::from_flags_or_env(Some(text), Some("t.token".as_ref()), flags);
/// assert!(both.unwrap_err().to_string().contains("--auth-token and --auth-token-file"));
/// # Ok(()) }
/// ```
pub fn from_flags_or_env(
    text: Option<&str>,
    file: Option<&Path>,
    flags: [&str; 2],
) -> Result<Option<(Token, String)>, Error> {
    from_flags_or_vars(text, file, flags, env_var)
}

/// [`from_flags_or_env`] over any source of variables (`var(name)`: the value, `None` when
/// unset or empty), for programs that test their flags without touching the process's
/// environment.
pub fn from_flags_or_vars(
    text: Option<&str>,
    file: Option<&Path>,
    [text_flag, file_flag]: [&str; 2],
    var: impl Fn(&str) -> Option<String>,
) -> Result<Option<(Token, String)>, Error> {
    match (text, file) {
        (Some(_), Some(_)) => Err(Error::Usage(format!(
            "{text_flag} and {file_flag} are both given: give one (the file keeps the secret out of the \
             process list)"
        ))),
        (Some(text), None) => Token::new(text)
            .map(|t| Some((t, text_flag.to_owned())))
            .map_err(|e| Error::Usage(format!("{text_flag}: {e}"))),
        (None, Some(path)) => Token::from_file(path)
            .map(|t| Some((t, format!("{file_flag} {}", path.display()))))
            .map_err(|e| Error::Usage(format!("{file_flag}: {e}"))),
        (None, None) => sourced_from_vars(var),
    }
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token").field("id", &self.id()).field("secret", &"<redacted>").finish()
    }
}

impl std::fmt::Display for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.id() {
            Some(id) => write!(f, "token {id}"),
            None => f.write_str("a token (redacted)"),
        }
    }
}

/// A gRPC channel (any `tower` service of HTTP requests) that adds the token's
/// `authorization` header to every request it sends: unary and streaming calls alike, on
/// every connection it makes. Without a token it sends requests as they are.
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use weft_agent::token::{Authorized, Token};
/// let channel = tonic::transport::Endpoint::from_static("http://127.0.0.1:7400").connect_lazy();
/// let token = Token::from_env()?;
/// let channel = Authorized::new(channel, token);
/// let status = weft_proto::fabric::v1::cluster_client::ClusterClient::new(channel);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Authorized<S> {
    inner: S,
    header: Option<HeaderValue>,
}

impl<S> Authorized<S> {
    /// `inner` with `token` on every request (`None`: none).
    pub fn new(inner: S, token: Option<Token>) -> Self {
        Self { inner, header: token.map(|t| t.header) }
    }
}

impl<S> std::fmt::Debug for Authorized<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorized").field("token", &self.header.is_some()).finish_non_exhaustive()
    }
}

impl<S, B> tonic::codegen::Service<http::Request<B>> for Authorized<S>
where
    S: tonic::codegen::Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        if let Some(header) = &self.header {
            request.headers_mut().insert(AUTHORIZATION, header.clone());
        }
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "weft_0123456789ab_00112233445566778899aabbccddeeff";
    const SECRET_PART: &str = "00112233";

    fn vars(pairs: Vec<(&'static str, String)>) -> impl Fn(&str) -> Option<String> {
        move |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_secret_stays_out_of_debug_and_display() {
        let token = Token::new(format!("  {TEXT}\n")).unwrap();
        assert_eq!(token.secret(), TEXT, "trimmed");
        assert_eq!(token.id(), Some("0123456789ab"));
        assert!(token.header().is_sensitive());
        for shown in [format!("{token:?}"), format!("{token}"), format!("{token:#?}")] {
            assert!(!shown.contains("00112233"), "{shown}");
        }
        assert!(format!("{token:?}").contains("0123456789ab"));
        let other = Token::new("opaque-secret").unwrap();
        assert_eq!(other.id(), None);
        assert!(!format!("{other:?} {other}").contains("opaque"));
    }

    #[test]
    fn bad_text_is_refused_without_repeating_it() {
        assert!(Token::new(" \n").unwrap_err().to_string().contains("empty"));
        let e = Token::new("weft_ab_s3cr3t x").unwrap_err().to_string();
        assert!(e.contains("cannot be sent in a header") && !e.contains("s3cr3t"), "{e}");
        assert!(Token::new("x".repeat(MAX_TOKEN_BYTES + 1)).is_err());
    }

    #[test]
    fn explicit_beats_the_environment_and_the_environment_holds_one() {
        const OTHER: &str = "weft_aaaaaaaaaaaa_ffeeddccbbaa99887766554433221100";
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{TEXT}\n")).unwrap();
        let path = file.display().to_string();
        let flags = ["--auth-token", "--auth-token-file"];
        let both_vars = || vars(vec![(env::TOKEN, OTHER.into()), (env::TOKEN_FILE, "/nonexistent".into())]);
        let id = |t: Option<Token>| t.and_then(|t| t.id().map(str::to_owned));

        // A builder's token wins, and the environment (even a bad one) is not read.
        let mine = Token::new(TEXT).unwrap();
        assert_eq!(
            id(Token::explicit_or_vars(Some(mine.clone()), both_vars()).unwrap()).as_deref(),
            Some("0123456789ab")
        );
        let e = Token::explicit_or_vars(None, both_vars()).unwrap_err().to_string();
        assert!(e.contains("WEFT_TOKEN and WEFT_TOKEN_FILE are both set"), "{e}");
        let from_env = Token::explicit_or_vars(None, vars(vec![(env::TOKEN, OTHER.into())])).unwrap();
        assert_eq!(id(from_env).as_deref(), Some("aaaaaaaaaaaa"));

        // A flag wins over either variable.
        let (t, from) = from_flags_or_vars(Some(TEXT), None, flags, both_vars()).unwrap().unwrap();
        assert_eq!((t.id(), from.as_str()), (Some("0123456789ab"), "--auth-token"));
        let (t, from) = from_flags_or_vars(None, Some(&file), flags, vars(vec![(env::TOKEN, OTHER.into())]))
            .unwrap()
            .unwrap();
        assert_eq!((t.id(), from), (Some("0123456789ab"), format!("--auth-token-file {path}")));
        // Two explicit sources, or two in the environment, are errors naming both.
        let e = from_flags_or_vars(Some(TEXT), Some(&file), flags, vars(vec![])).unwrap_err().to_string();
        assert!(
            e.contains("--auth-token and --auth-token-file are both given") && !e.contains(SECRET_PART),
            "{e}"
        );
        let e = from_flags_or_vars(None, None, flags, both_vars()).unwrap_err().to_string();
        assert!(e.contains("WEFT_TOKEN and WEFT_TOKEN_FILE are both set"), "{e}");
        // Without a flag, the environment's, saying which variable.
        let (t, from) = from_flags_or_vars(None, None, flags, vars(vec![(env::TOKEN_FILE, path.clone())]))
            .unwrap()
            .unwrap();
        assert_eq!((t.id(), from), (Some("0123456789ab"), format!("WEFT_TOKEN_FILE {path}")));
        assert!(from_flags_or_vars(None, None, flags, vars(vec![])).unwrap().is_none());
        // A bad flag is named, its text is not repeated.
        let e =
            from_flags_or_vars(Some("weft_ab_s3cr3t x"), None, flags, vars(vec![])).unwrap_err().to_string();
        assert!(e.starts_with("--auth-token:") && !e.contains("s3cr3t"), "{e}");
        let missing = dir.path().join("missing");
        let e = from_flags_or_vars(None, Some(&missing), flags, vars(vec![])).unwrap_err().to_string();
        assert!(e.starts_with("--auth-token-file:") && e.contains(&missing.display().to_string()), "{e}");
    }

    #[test]
    fn the_environment_gives_the_text_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, format!("{TEXT}\n")).unwrap();
        let path = file.display().to_string();

        assert!(Token::from_vars(vars(vec![])).unwrap().is_none());
        let t = Token::from_vars(vars(vec![(env::TOKEN, TEXT.into())])).unwrap().unwrap();
        assert_eq!(t.secret(), TEXT);
        let t = Token::from_vars(vars(vec![(env::TOKEN_FILE, path.clone())])).unwrap().unwrap();
        assert_eq!(t.secret(), TEXT, "read from the file, trimmed");

        let e = Token::from_vars(vars(vec![(env::TOKEN, TEXT.into()), (env::TOKEN_FILE, path.clone())]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("both set"), "{e}");
        let missing = dir.path().join("missing").display().to_string();
        let e = Token::from_vars(vars(vec![(env::TOKEN_FILE, missing.clone())])).unwrap_err().to_string();
        assert!(e.contains("WEFT_TOKEN_FILE") && e.contains(&missing) && e.contains("cannot read"), "{e}");

        std::fs::write(&file, "\n").unwrap();
        let e = Token::from_file(&file).unwrap_err().to_string();
        assert!(e.contains(&path) && e.contains("empty"), "{e}");
        std::fs::write(&file, vec![b'a'; MAX_TOKEN_FILE_BYTES as usize + 1]).unwrap();
        let e = Token::from_file(&file).unwrap_err().to_string();
        assert!(e.contains(&path) && e.contains("at most"), "{e}");
        let e = Token::from_file(dir.path()).unwrap_err().to_string();
        assert!(e.contains("not a file"), "{e}");
    }
}

#[cfg(test)]
#[path = "token_test.rs"]
mod wire_tests;
