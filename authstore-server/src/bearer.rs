//! Bearer-token validation for resource servers (placeholder while the module is written).
