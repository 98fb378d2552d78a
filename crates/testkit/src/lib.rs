//! Test support shared by every suite: throwaway database servers ([`servers`]), the
//! checker of the capture guarantees ([`checker`]), the live scenarios ([`live`]), run
//! through the `cdc` runtime too ([`pipeline`]), the
//! torture and fault run ([`torture`]) with its network-cut [`proxy`], test certificates
//! ([`tls`]) and seeded random numbers ([`rng`]).

pub mod checker;
pub mod http;
pub mod live;
pub mod pipeline;
pub mod proxy;
pub mod rng;
pub mod servers;
pub mod tls;
pub mod torture;
