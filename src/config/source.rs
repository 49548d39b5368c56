//! TODO(config helper): source
