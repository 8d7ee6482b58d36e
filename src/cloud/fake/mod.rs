//! Placeholder for the stateful fake cloud (Neon and Fly over loopback), written on another branch.
