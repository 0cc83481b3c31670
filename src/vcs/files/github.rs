//! Changed files from github (to be written).

use super::{FilesQuery, Found, Reader, Stop};

pub(super) async fn read(_r: &mut Reader<'_>, _q: &FilesQuery) -> Found {
    Err(Stop::Failed("not yet".into()))
}
