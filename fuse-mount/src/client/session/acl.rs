//! A node's ACL names (Chubby §2.4): read, changed as a whole, or one list at a time without
//! undoing a change made meanwhile.

use proto::chubby::{Handle, NodeAcl, NodeStat, SetAclRequest};
use proto::Refusal;
use tonic::Status;

use super::Session;
use crate::client::ClientError;

impl Session {
    /// The node's ACL names (Chubby §2.4), always from the master (they are not cached), with
    /// its metadata.
    pub async fn acl(&self, handle: &Handle) -> Result<(NodeAcl, NodeStat), ClientError> {
        let node = self.inner.cache().node_of(handle);
        let r = self.get_stat(handle, node).await?;
        // An answer without the names (its master does not report them) is never taken for
        // empty lists, which a read-modify-write would then store.
        let acl = r.acl.ok_or_else(|| {
            ClientError::Rpc(Box::new(Status::unimplemented("the master does not report ACL names; upgrade it")))
        })?;
        Ok((acl, r.stat.unwrap_or_default()))
    }

    /// Replaces the node's ACL names, if the node is still at ACL generation
    /// `if_acl_generation` when given (else a `GenerationMismatch` refusal). The handle must
    /// carry the change-ACL right, which a handle gets at open when its session's principal
    /// is on the node's change-ACL list.
    pub async fn set_acl(
        &self,
        handle: &Handle,
        acl: NodeAcl,
        if_acl_generation: Option<u64>,
    ) -> Result<NodeStat, ClientError> {
        let f = self.next_request();
        let req = SetAclRequest {
            request: Some(f.request),
            handle: Some(handle.clone()),
            readers: acl.readers,
            writers: acl.writers,
            change_acl: acl.change_acl,
            if_acl_generation,
        };
        Ok(self.call(self.change_deadline(), rpc!(SetAcl, req)).await?.stat.unwrap_or_default())
    }

    /// Changes the node's ACL names with `change` (read, changed, written back only if no
    /// other change came in between; retried a few times if one did).
    pub async fn update_acl(
        &self,
        handle: &Handle,
        change: impl Fn(&mut NodeAcl),
    ) -> Result<(NodeAcl, NodeStat), ClientError> {
        let mut tries = 0;
        loop {
            let (mut acl, stat) = self.acl(handle).await?;
            change(&mut acl);
            match self.set_acl(handle, acl.clone(), Some(stat.acl_generation)).await {
                Ok(stat) => return Ok((acl, stat)),
                Err(e) if e.reason() == Some(Refusal::GenerationMismatch) && tries < 5 => tries += 1,
                Err(e) => return Err(e),
            }
        }
    }
}
