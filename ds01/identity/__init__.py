"""Who a caller is: the local account databases (`nss`, the only caller of pwd and grp), the LDAP directory
(`directory`), and the resolver that combines them (`accounts`). Nothing is re-exported, so that a command that
only needs `nss` never loads python-ldap."""
