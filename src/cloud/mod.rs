//! Talking to the clouds tenants live on: Neon (Postgres) and Fly (machines),
//! and the loopback fake of both that tests, the demo and rehearsals use.
pub mod fake;
