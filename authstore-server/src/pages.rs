//! HTML pages (placeholder while the module is written).
