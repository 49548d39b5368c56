//! TODO(config helper): static_list
