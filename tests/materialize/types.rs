//! The type mapping, type by type: rows of every common type go from each source through
//! the collection into the destination and are read back.
