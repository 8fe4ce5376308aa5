//! Typed helpers over [`SessionHandle::action`]: each builds the action's
//! headers (empty values are left out) and returns the complete response.
//! Every helper passes the same checks as a caller's action (CR/LF, allow/deny).

use switchboard_proto::ami::v1 as pb;

use crate::session::{ActionError, SessionHandle};

fn request(action: &str, headers: &[(&str, &str)]) -> pb::ActionRequest {
    pb::ActionRequest {
        action: action.to_owned(),
        headers: headers
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(n, v)| pb::Header {
                name: (*n).to_owned(),
                value: (*v).to_owned(),
            })
            .collect(),
        ..Default::default()
    }
}

/// The first value of `name` in a response's headers.
pub fn header<'a>(response: &'a pb::ActionResponse, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case(name))
        .map(|h| h.value.as_str())
}

impl SessionHandle {
    async fn call(&self, action: &str, headers: &[(&str, &str)]) -> Result<pb::ActionResponse, ActionError> {
        self.action(request(action, headers)).await
    }

    /// `Ping`.
    pub async fn ping(&self) -> Result<pb::ActionResponse, ActionError> {
        self.call("Ping", &[]).await
    }

    /// `Originate` to a dialplan extension; waits for `OriginateResponse`
    /// (in `events`).
    pub async fn originate(
        &self,
        channel: &str,
        context: &str,
        exten: &str,
        priority: &str,
        caller_id: &str,
    ) -> Result<pb::ActionResponse, ActionError> {
        let headers = [
            ("Channel", channel),
            ("Context", context),
            ("Exten", exten),
            ("Priority", priority),
            ("CallerID", caller_id),
        ];
        self.call("Originate", &headers).await
    }

    /// `Redirect` a channel to a dialplan location.
    pub async fn redirect(
        &self,
        channel: &str,
        context: &str,
        exten: &str,
        priority: &str,
    ) -> Result<pb::ActionResponse, ActionError> {
        let headers = [
            ("Channel", channel),
            ("Context", context),
            ("Exten", exten),
            ("Priority", priority),
        ];
        self.call("Redirect", &headers).await
    }

    /// `Hangup` a channel (a name or a `/regex/`).
    pub async fn hangup(&self, channel: &str) -> Result<pb::ActionResponse, ActionError> {
        self.call("Hangup", &[("Channel", channel)]).await
    }

    /// `Setvar`; an empty channel sets a global variable.
    pub async fn setvar(&self, channel: &str, variable: &str, value: &str) -> Result<pb::ActionResponse, ActionError> {
        self.call(
            "Setvar",
            &[("Channel", channel), ("Variable", variable), ("Value", value)],
        )
        .await
    }

    /// `Getvar`: the value is `header(&response, "Value")`.
    pub async fn getvar(&self, channel: &str, variable: &str) -> Result<pb::ActionResponse, ActionError> {
        self.call("Getvar", &[("Channel", channel), ("Variable", variable)])
            .await
    }

    /// `GetConfig` of a file (optionally one category).
    pub async fn get_config(&self, filename: &str, category: &str) -> Result<pb::ActionResponse, ActionError> {
        self.call("GetConfig", &[("Filename", filename), ("Category", category)])
            .await
    }

    /// `GetConfigJSON` of a file.
    pub async fn get_config_json(&self, filename: &str) -> Result<pb::ActionResponse, ActionError> {
        self.call("GetConfigJSON", &[("Filename", filename)]).await
    }

    /// `CoreShowChannels` (an event list).
    pub async fn core_show_channels(&self) -> Result<pb::ActionResponse, ActionError> {
        self.call("CoreShowChannels", &[]).await
    }

    /// `Status` of every channel, or of one (an event list).
    pub async fn channel_status(&self, channel: &str) -> Result<pb::ActionResponse, ActionError> {
        self.call("Status", &[("Channel", channel)]).await
    }

    /// `ExtensionState` of `exten@context`.
    pub async fn extension_state(&self, exten: &str, context: &str) -> Result<pb::ActionResponse, ActionError> {
        self.call("ExtensionState", &[("Exten", exten), ("Context", context)])
            .await
    }

    /// `PJSIPShowEndpoints` (an event list).
    pub async fn pjsip_show_endpoints(&self) -> Result<pb::ActionResponse, ActionError> {
        self.call("PJSIPShowEndpoints", &[]).await
    }

    /// `SIPpeers` (chan_sip, Asterisk < 21; an event list).
    pub async fn sip_peers(&self) -> Result<pb::ActionResponse, ActionError> {
        self.call("SIPpeers", &[]).await
    }

    /// `IAXpeerlist` (an event list).
    pub async fn iax_peer_list(&self) -> Result<pb::ActionResponse, ActionError> {
        self.call("IAXpeerlist", &[]).await
    }

    /// `QueueStatus`, of every queue or one (an event list).
    pub async fn queue_status(&self, queue: &str) -> Result<pb::ActionResponse, ActionError> {
        self.call("QueueStatus", &[("Queue", queue)]).await
    }

    /// `Command`: a CLI command (denied by default; see `ami.deny_actions`).
    pub async fn command(&self, command: &str) -> Result<pb::ActionResponse, ActionError> {
        self.call("Command", &[("Command", command)]).await
    }

    /// `UserEvent` named `name` with extra headers.
    pub async fn user_event(&self, name: &str, headers: &[(&str, &str)]) -> Result<pb::ActionResponse, ActionError> {
        let mut all = vec![("UserEvent", name)];
        all.extend_from_slice(headers);
        self.call("UserEvent", &all).await
    }

    /// `Logoff`: the PBX answers `Goodbye` and closes; the session reconnects.
    pub async fn logoff(&self) -> Result<pb::ActionResponse, ActionError> {
        self.call("Logoff", &[]).await
    }
}
