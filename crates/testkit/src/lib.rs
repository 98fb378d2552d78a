//! Test support shared by every suite: throwaway database servers ([`servers`]) and the
//! checker of the capture guarantees ([`checker`]), test certificates ([`tls`]).

pub mod checker;
pub mod live;
pub mod servers;
pub mod tls;
