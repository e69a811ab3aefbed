//! `loadgen`: replays YAML workloads against a chordkv cluster. This is a placeholder until
//! the loadgen issue lands; today the main job is `chordkv cluster` plus `chordkv put/get`.

fn main() {
    eprintln!("loadgen is not implemented yet: see README.md (use `chordkv cluster` and `chordkv put/get`)");
    std::process::exit(2);
}
