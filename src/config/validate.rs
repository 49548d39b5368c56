//! TODO(config helper): validate
