//! Kind `kubernetes`.
