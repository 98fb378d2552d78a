//! Backfill modes and Automatic selection (DESIGN.md §6).
//!
//! `BackfillMode` is what the user writes in a binding's resource config; `ResolvedMode`
//! is what the capture runs, after Automatic has been decided from the table's facts.
//! Selection is a pure function of [`TableFacts`], so `discover` and `capture` always agree
//! and the reason printed by `discover` is the reason the capture acts on.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The mode a user asks for. Serialises exactly as `"Automatic"`, `"Normal"`, `"Precise"`,
/// `"Only Changes"`, `"Without Primary Key"`; absent, `null` or `""` means Automatic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum BackfillMode {
    /// Let the connector choose from the table's key (see [`select_mode`]).
    #[default]
    Automatic,
    /// Chunks and every change, emitted as they come: converges, may duplicate.
    Normal,
    /// Chunks stitched into the stream: a clean history per key.
    Precise,
    /// No backfill; changes from activation on.
    OnlyChanges,
    /// Physical-order scan for tables with no usable key.
    WithoutPrimaryKey,
}

/// Every spelling the config accepts, in the order error messages list them.
pub const MODE_NAMES: [&str; 5] = [
    "Automatic",
    "Normal",
    "Precise",
    "Only Changes",
    "Without Primary Key",
];

impl BackfillMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            BackfillMode::Automatic => "Automatic",
            BackfillMode::Normal => "Normal",
            BackfillMode::Precise => "Precise",
            BackfillMode::OnlyChanges => "Only Changes",
            BackfillMode::WithoutPrimaryKey => "Without Primary Key",
        }
    }

    /// Parses the config spelling; `""` is Automatic.
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "" | "Automatic" => BackfillMode::Automatic,
            "Normal" => BackfillMode::Normal,
            "Precise" => BackfillMode::Precise,
            "Only Changes" => BackfillMode::OnlyChanges,
            "Without Primary Key" => BackfillMode::WithoutPrimaryKey,
            other => {
                return Err(format!(
                    "unknown backfill mode {other:?}; valid modes are {}",
                    MODE_NAMES.map(|m| format!("{m:?}")).join(", ")
                ));
            }
        })
    }

    /// The mode the capture runs when this one is asked for explicitly; `None` for Automatic.
    pub fn explicit(self) -> Option<ResolvedMode> {
        match self {
            BackfillMode::Automatic => None,
            BackfillMode::Normal => Some(ResolvedMode::Normal),
            BackfillMode::Precise => Some(ResolvedMode::Precise),
            BackfillMode::OnlyChanges => Some(ResolvedMode::OnlyChanges),
            BackfillMode::WithoutPrimaryKey => Some(ResolvedMode::WithoutPrimaryKey),
        }
    }
}

impl Serialize for BackfillMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for BackfillMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        BackfillMode::parse(s.as_deref().unwrap_or("")).map_err(serde::de::Error::custom)
    }
}

impl schemars::JsonSchema for BackfillMode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "BackfillMode".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "enum": ["", "Automatic", "Normal", "Precise", "Only Changes", "Without Primary Key"],
            "default": "Automatic",
            "description": "How the table is backfilled and stitched into the change stream."
        })
    }
}

/// A mode the capture actually runs. Stored in the state, so a binding keeps the mode it
/// started its backfill with until its backfill counter is raised.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ResolvedMode {
    /// See [`BackfillMode::Normal`].
    Normal,
    /// See [`BackfillMode::Precise`].
    Precise,
    /// See [`BackfillMode::OnlyChanges`].
    OnlyChanges,
    /// See [`BackfillMode::WithoutPrimaryKey`].
    WithoutPrimaryKey,
}

impl ResolvedMode {
    /// The config spelling.
    pub fn as_str(self) -> &'static str {
        self.as_requested().as_str()
    }

    /// The same mode, as a config value.
    pub fn as_requested(self) -> BackfillMode {
        match self {
            ResolvedMode::Normal => BackfillMode::Normal,
            ResolvedMode::Precise => BackfillMode::Precise,
            ResolvedMode::OnlyChanges => BackfillMode::OnlyChanges,
            ResolvedMode::WithoutPrimaryKey => BackfillMode::WithoutPrimaryKey,
        }
    }
}

impl Serialize for ResolvedMode {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for ResolvedMode {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        BackfillMode::parse(&s)
            .map_err(serde::de::Error::custom)?
            .explicit()
            .ok_or_else(|| serde::de::Error::custom("a resolved mode cannot be Automatic"))
    }
}

/// How the connector can put a key column's values in the database's own `ORDER BY` order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum KeyOrdering {
    /// The connector compares values itself and is proven to agree with the database
    /// (integers, uuid, bytea, byte-ordered text, temporal and numeric types).
    Native,
    /// The database is asked to classify a batch of keys against the chunk bounds
    /// (collated text, enums, anything with a comparison operator).
    Database,
    /// Neither: Precise is impossible for this key.
    Unorderable,
}

/// One key column as `select_mode` needs to see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyColumnFacts {
    /// Column name.
    pub name: String,
    /// Type as the database spells it.
    pub type_name: String,
    /// How its values can be ordered.
    pub ordering: KeyOrdering,
}

/// What Automatic selection looks at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableFacts {
    /// The usable key (primary key, or a unique index on non-null columns), in key order;
    /// empty when the table has none.
    pub key: Vec<KeyColumnFacts>,
}

/// The mode Automatic resolves to and a one-sentence reason.
pub fn select_mode(facts: &TableFacts) -> (ResolvedMode, String) {
    if facts.key.is_empty() {
        return (
            ResolvedMode::WithoutPrimaryKey,
            "the table has no primary key or unique index on non-null columns".into(),
        );
    }
    if let Some(col) = facts
        .key
        .iter()
        .find(|c| c.ordering == KeyOrdering::Unorderable)
    {
        return (
            ResolvedMode::Normal,
            format!(
                "key column {} has type {} which the connector can neither order natively nor have the database compare",
                col.name, col.type_name
            ),
        );
    }
    let names = facts
        .key
        .iter()
        .map(|c| c.name.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let asked: Vec<&str> = facts
        .key
        .iter()
        .filter(|c| c.ordering == KeyOrdering::Database)
        .map(|c| c.name.as_str())
        .collect();
    let reason = if asked.is_empty() {
        format!("key ({names}) is ordered natively exactly as the database orders it")
    } else {
        format!(
            "key ({names}) is ordered by asking the database to compare {}",
            asked.join(", ")
        )
    };
    (ResolvedMode::Precise, reason)
}

/// Decides the mode a binding runs: Automatic is resolved by [`select_mode`]; an explicit
/// mode is checked against the table. The error says what to change.
pub fn resolve_mode(
    requested: BackfillMode,
    facts: &TableFacts,
) -> Result<(ResolvedMode, String), String> {
    let Some(mode) = requested.explicit() else {
        return Ok(select_mode(facts));
    };
    let keyless = facts.key.is_empty();
    match mode {
        ResolvedMode::Precise | ResolvedMode::Normal if keyless => Err(format!(
            "mode {:?} needs a primary key or a unique index on non-null columns, and the table has none; use \"Without Primary Key\" (or \"Automatic\"), or add a key",
            mode.as_str()
        )),
        ResolvedMode::Precise => {
            match facts
                .key
                .iter()
                .find(|c| c.ordering == KeyOrdering::Unorderable)
            {
                Some(col) => Err(format!(
                    "mode \"Precise\" needs a key the connector can order, and key column {} has type {}; use \"Normal\" (or \"Automatic\")",
                    col.name, col.type_name
                )),
                None => Ok((mode, "chosen in the config".into())),
            }
        }
        _ => Ok((mode, "chosen in the config".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(name: &str, ordering: KeyOrdering) -> KeyColumnFacts {
        KeyColumnFacts {
            name: name.into(),
            type_name: "t".into(),
            ordering,
        }
    }

    #[test]
    fn mode_spellings_round_trip_and_empty_is_automatic() {
        for name in MODE_NAMES {
            let mode: BackfillMode = serde_json::from_str(&format!("{name:?}")).unwrap();
            assert_eq!(serde_json::to_string(&mode).unwrap(), format!("{name:?}"));
        }
        assert_eq!(
            serde_json::from_str::<BackfillMode>("\"\"").unwrap(),
            BackfillMode::Automatic
        );
        assert_eq!(
            serde_json::from_str::<BackfillMode>("null").unwrap(),
            BackfillMode::Automatic
        );
        let err = serde_json::from_str::<BackfillMode>("\"precise\"")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"Only Changes\"") && err.contains("\"precise\""),
            "{err}"
        );
    }

    #[test]
    fn automatic_selection_follows_the_key() {
        let keyless = TableFacts { key: vec![] };
        assert_eq!(select_mode(&keyless).0, ResolvedMode::WithoutPrimaryKey);
        let native = TableFacts {
            key: vec![col("id", KeyOrdering::Native)],
        };
        assert_eq!(select_mode(&native).0, ResolvedMode::Precise);
        let collated = TableFacts {
            key: vec![
                col("id", KeyOrdering::Native),
                col("name", KeyOrdering::Database),
            ],
        };
        let (mode, reason) = select_mode(&collated);
        assert_eq!(mode, ResolvedMode::Precise);
        assert!(reason.contains("name"), "{reason}");
        let odd = TableFacts {
            key: vec![col("p", KeyOrdering::Unorderable)],
        };
        let (mode, reason) = select_mode(&odd);
        assert_eq!(mode, ResolvedMode::Normal);
        assert!(reason.contains('p'), "{reason}");
    }

    #[test]
    fn explicit_modes_are_checked_against_the_table() {
        let keyless = TableFacts { key: vec![] };
        assert!(
            resolve_mode(BackfillMode::Precise, &keyless)
                .unwrap_err()
                .contains("Without Primary Key")
        );
        assert!(resolve_mode(BackfillMode::Normal, &keyless).is_err());
        assert!(resolve_mode(BackfillMode::OnlyChanges, &keyless).is_ok());
        let odd = TableFacts {
            key: vec![col("p", KeyOrdering::Unorderable)],
        };
        assert!(resolve_mode(BackfillMode::Precise, &odd).is_err());
        assert_eq!(
            resolve_mode(BackfillMode::Normal, &odd).unwrap().0,
            ResolvedMode::Normal
        );
        let native = TableFacts {
            key: vec![col("id", KeyOrdering::Native)],
        };
        assert_eq!(
            resolve_mode(BackfillMode::WithoutPrimaryKey, &native)
                .unwrap()
                .0,
            ResolvedMode::WithoutPrimaryKey
        );
    }
}
