//! No tail with SQLite: one process writes the file, and its writer hands every commit to the
//! fan-out itself (see [`super::writer`]), so there is nobody else's commit to read back. The
//! shared store's tail is `postgres::tail`.
