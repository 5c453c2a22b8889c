//! Example programs live beside this crate; see `dfs.rs`.
