//! gitea: reads of changed files (to be written).
