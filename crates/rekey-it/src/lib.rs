//! Nothing to link: this crate exists for its integration tests
//! (`tests/it`), which drive the `rekey` and `fake-cloud` binaries the
//! workspace builds. Keeping them here keeps the fake cloud and axum out of
//! the product crate's dependency tree.
