//! Unit tests of the readers' shared parts.
