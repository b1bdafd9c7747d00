"""remote: members on other hosts.

ssh:// targets written through the system's ssh (sshtarget) and ssh:// members
read over SFTP (sshread).  Object-store targets belong here too.
"""
