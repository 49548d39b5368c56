//! TODO(config helper): duration
