//! TODO(config helper): raw
