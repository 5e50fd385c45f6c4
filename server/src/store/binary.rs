//! The bytes of Binary resources, in chunks of [`CHUNK_BYTES`]
//! (`migrations/0030_binary_content.sql`): written one chunk a statement
//! inside the write's transaction, read one chunk a round trip
//! (`store::stream`), so memory holds a chunk or two whatever the size.

use actix_web::web::Bytes;
use futures_util::Stream;
use uuid::Uuid;

use super::{Query, Store, Tx};
use crate::error::Result;

/// Every chunk but the last holds exactly this many bytes: a multiple of 3,
/// so the base64 of the chunks, concatenated, is the base64 of the whole.
pub const CHUNK_BYTES: usize = 3 * 87_382;

impl Tx {
    /// Removes the bytes a Binary had (before an update writes new ones).
    pub async fn clear_binary(&self, project_id: Uuid, id: Uuid) -> Result<()> {
        self.run(
            "DELETE FROM binary_chunk WHERE project_id = $1 AND binary_id = $2",
            &[&project_id, &id],
        )
        .await?;
        Ok(())
    }

    pub async fn put_binary_chunk(
        &self,
        project_id: Uuid,
        id: Uuid,
        seq: i32,
        bytes: &[u8],
    ) -> Result<()> {
        self.run(
            "INSERT INTO binary_chunk (project_id, binary_id, seq, bytes) VALUES ($1, $2, $3, $4)",
            &[&project_id, &id, &seq, &bytes],
        )
        .await?;
        Ok(())
    }

    /// Moves a Binary's bytes to the project its resource was written in
    /// (a super admin's `meta.project`).
    pub async fn move_binary(&self, from: Uuid, to: Uuid, id: Uuid) -> Result<()> {
        self.run(
            "UPDATE binary_chunk SET project_id = $2 WHERE project_id = $1 AND binary_id = $3",
            &[&from, &to, &id],
        )
        .await?;
        Ok(())
    }
}

impl Store {
    /// The bytes of one Binary of `project_id`, chunk by chunk, in order,
    /// from one snapshot (a concurrent update cannot mix versions).
    pub fn binary_chunks(
        &self,
        project_id: Uuid,
        id: Uuid,
    ) -> impl Stream<Item = Result<Bytes>> + 'static {
        let mut query = Query::new("SELECT bytes FROM binary_chunk WHERE project_id = ");
        query
            .bind(project_id)
            .push(" AND binary_id = ")
            .bind(id)
            .push(" ORDER BY seq");
        super::stream::first_column(self.pool().clone(), query)
    }
}
