//! WorkspaceService: workspaces created and listed by an admin.

use tonic::{Request, Response, Status};

use super::AppState;
use super::convert::{page_size, ts};
use super::error::invalid;
use crate::db;
use crate::error::Violation;
use crate::proto::{self as pb, workspace_service_server::WorkspaceService};

/// The WorkspaceService implementation.
#[derive(Debug, Clone)]
pub struct Admin {
    state: AppState,
}

impl Admin {
    /// The service over shared state.
    pub fn new(state: AppState) -> Self {
        Self { state }
    }
}

#[tonic::async_trait]
impl WorkspaceService for Admin {
    async fn create_workspace(
        &self,
        req: Request<pb::CreateWorkspaceRequest>,
    ) -> Result<Response<pb::CreateWorkspaceResponse>, Status> {
        let name = req.into_inner().name.trim().to_string();
        if !super::workspace::valid(&name) {
            return Err(invalid(vec![Violation::new(
                "name",
                "must be 1 to 63 of a-z, 0-9, `-`, `_`, `.`, starting alphanumeric",
            )]));
        }
        let (id, created) = self.state.workspaces.create(&name).await?;
        if !created {
            return Err(Status::already_exists(format!(
                "workspace {name:?} already exists"
            )));
        }
        let client = self.state.owner_conn().await?;
        let at = db::workspaces::created_at(&**client, id).await?;
        Ok(Response::new(pb::CreateWorkspaceResponse {
            workspace: Some(pb::Workspace {
                id: id.0,
                name,
                create_time: Some(ts(at)),
            }),
        }))
    }

    async fn list_workspaces(
        &self,
        req: Request<pb::ListWorkspacesRequest>,
    ) -> Result<Response<pb::ListWorkspacesResponse>, Status> {
        let r = req.into_inner();
        let limit = page_size(r.page_size, 100, 1000)
            .map_err(|e| invalid(vec![Violation::new("page_size", e)]))?;
        let client = self.state.owner_conn().await?;
        let rows = db::workspaces::list(&**client, &r.page_token, limit + 1).await?;
        let more = rows.len() as i64 > limit;
        let workspaces: Vec<pb::Workspace> = rows
            .into_iter()
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .map(|(id, name, at)| pb::Workspace {
                id: id.0,
                name,
                create_time: Some(ts(at)),
            })
            .collect();
        let next_page_token = match more {
            true => workspaces
                .last()
                .map(|w| w.name.clone())
                .unwrap_or_default(),
            false => String::new(),
        };
        Ok(Response::new(pb::ListWorkspacesResponse {
            workspaces,
            next_page_token,
        }))
    }
}
