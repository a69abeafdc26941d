//! `weft gossip-key`: a fresh random gossip key, for `gossip_key_file`.

use weft_fabric::membership::keys::{Keys, generate};

use crate::render::outln;

/// Flags of `weft gossip-key` (none).
#[derive(Debug, clap::Args)]
pub struct Args {}

/// Prints a new key (base64) on stdout and its id on stderr.
pub fn run(_args: Args) -> anyhow::Result<i32> {
    let key = generate();
    let id = Keys::parse_list(&key)?.sender().id();
    outln!("{key}");
    eprintln!("gossip key id {id} (`weft members` shows the ids of the keys a node holds)");
    Ok(0)
}
