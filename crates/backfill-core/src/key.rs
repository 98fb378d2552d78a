//! Keys, the backfill window and classification of keys against it.
//!
//! A binding's keyspace, at any moment of its backfill, is cut by the cursor (the last key
//! emitted in a chunk) and `hi` (the last key of the chunk in hand):
//!
//! ```text
//!   ──────────────────┤cursor├────────────────┤hi├─────────────────▶ key order
//!        Done                    Window                 Ahead
//!   (emit changes)      (patch the chunk buffer)   (a later chunk reads it)
//! ```
//!
//! The comparisons must agree with the database's own `ORDER BY` on the key, or Precise
//! silently loses or duplicates rows. A source either compares natively where its value
//! encoding is proven to order as the database does ([`KeyClassifier::compare_native`]),
//! or answers a whole batch of keys in one query ([`KeyClassifier::classify`]).
//! Key *identity* (is this the same row?) is always exact equality of the JSON values.
//!
//! [`KeyClassifier::compare_native`]: crate::source::KeyClassifier::compare_native
//! [`KeyClassifier::classify`]: crate::source::KeyClassifier::classify

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A key as documents carry it: one JSON value per key column, in key order. For keyless
/// tables scanned in physical order it is the physical locator (for example a `ctid`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Key(pub Vec<Value>);

impl Key {
    /// A string equal for two keys exactly when their values are equal: the identity used
    /// to find a row in a chunk buffer.
    pub fn identity(&self) -> String {
        serde_json::to_string(&self.0).unwrap_or_default()
    }
}

/// The upper end of the window `(cursor, hi]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hi<'a> {
    /// The window is empty: `hi == cursor` (a binding between chunks, or not started).
    Empty,
    /// The last key of the chunk in hand.
    Key(&'a Key),
    /// The chunk in hand was the table's last: everything after the cursor is in it.
    Unbounded,
}

/// The backfill window `(lo, hi]` of one binding; `lo == None` is minus infinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Window<'a> {
    /// The cursor: keys at or below it are done.
    pub lo: Option<&'a Key>,
    /// The upper end.
    pub hi: Hi<'a>,
}

/// Where a key falls against a [`Window`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Region {
    /// `k <= cursor`: already backfilled, its changes are emitted.
    Done,
    /// `cursor < k <= hi`: in the chunk in hand; Precise patches the buffer.
    Window,
    /// `k > hi`: a later chunk will read it.
    Ahead,
}

impl Window<'_> {
    /// The region of a key from the database's answers to `key > lo` (true when there is
    /// no `lo`) and `key > hi` (ignored unless `hi` is a key): how a source that asks the
    /// server turns its answers into regions.
    pub fn region_from(&self, above_lo: bool, above_hi: bool) -> Region {
        if self.lo.is_some() && !above_lo {
            return Region::Done;
        }
        match self.hi {
            Hi::Empty => Region::Ahead,
            Hi::Unbounded => Region::Window,
            Hi::Key(_) if above_hi => Region::Ahead,
            Hi::Key(_) => Region::Window,
        }
    }

    /// Classifies `key` with a comparator that agrees with the database's order.
    pub fn classify_with(&self, key: &Key, cmp: impl Fn(&Key, &Key) -> Ordering) -> Region {
        if let Some(lo) = self.lo
            && cmp(key, lo) != Ordering::Greater
        {
            return Region::Done;
        }
        match self.hi {
            Hi::Empty => Region::Ahead,
            Hi::Unbounded => Region::Window,
            Hi::Key(hi) if cmp(key, hi) != Ordering::Greater => Region::Window,
            Hi::Key(_) => Region::Ahead,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: i64) -> Key {
        Key(vec![Value::from(i)])
    }

    fn cmp(a: &Key, b: &Key) -> Ordering {
        a.0[0].as_i64().cmp(&b.0[0].as_i64())
    }

    #[test]
    fn classifies_against_every_window_shape() {
        let (lo, hi) = (k(10), k(20));
        let w = Window {
            lo: Some(&lo),
            hi: Hi::Key(&hi),
        };
        let regions: Vec<Region> = [5, 10, 11, 20, 21]
            .iter()
            .map(|&i| w.classify_with(&k(i), cmp))
            .collect();
        assert_eq!(
            regions,
            [
                Region::Done,
                Region::Done,
                Region::Window,
                Region::Window,
                Region::Ahead
            ]
        );
        let start = Window {
            lo: None,
            hi: Hi::Empty,
        };
        assert_eq!(start.classify_with(&k(i64::MIN), cmp), Region::Ahead);
        let last = Window {
            lo: Some(&lo),
            hi: Hi::Unbounded,
        };
        assert_eq!(last.classify_with(&k(i64::MAX), cmp), Region::Window);
        assert_eq!(last.classify_with(&k(1), cmp), Region::Done);
    }

    #[test]
    fn regions_from_server_answers_agree_with_native_classification() {
        let (lo, hi) = (k(10), k(20));
        for w in [
            Window {
                lo: Some(&lo),
                hi: Hi::Key(&hi),
            },
            Window {
                lo: None,
                hi: Hi::Empty,
            },
            Window {
                lo: Some(&lo),
                hi: Hi::Unbounded,
            },
            Window {
                lo: None,
                hi: Hi::Key(&hi),
            },
        ] {
            for i in [5, 10, 11, 20, 21] {
                let key = k(i);
                let above_lo = w.lo.is_none_or(|l| cmp(&key, l) == Ordering::Greater);
                let above_hi = matches!(w.hi, Hi::Key(h) if cmp(&key, h) == Ordering::Greater);
                assert_eq!(
                    w.region_from(above_lo, above_hi),
                    w.classify_with(&key, cmp),
                    "{w:?} {i}"
                );
            }
        }
    }

    #[test]
    fn identity_is_exact_value_equality() {
        assert_eq!(k(1).identity(), k(1).identity());
        assert_ne!(
            Key(vec![Value::from("a")]).identity(),
            Key(vec![Value::from("A")]).identity()
        );
    }
}
